// A Group is a set of ranks that exchange tokens: the object every operation takes. It owns the
// transport and the configuration every rank agreed on when it was created.
#pragma once

#include <memory>
#include <string>

#include "moecomm/export.hpp"
#include "moecomm/types.hpp"

namespace moecomm {

struct GroupConfig {
  int num_experts = 0;         // global experts; must divide evenly over the ranks
  int hidden = 0;              // elements per token row
  DType dtype = DType::kBF16;  // dispatch payload dtype: f32 or bf16
  int topk = 0;                // slots per token, 1..num_experts
  int64_t timeout_ms = 0;      // deadline of every wait; 0: MOECOMM_TIMEOUT_MS or 300000
  // "auto", "local", "ucx", "mpi" or "nccl". "auto" reads MOECOMM_TRANSPORT, then picks "local"
  // when every rank is a thread of one process, else "ucx" when built, else "mpi" (see
  // docs/transports.md). "nccl" moves CUDA tensors over NCCL (one GPU per rank, the calling
  // thread's current device at creation) and the control rounds over what "auto" picks.
  std::string transport = "auto";
};

// Ranks that are threads of one process. Create one LocalWorld, then one Group per rank, each from
// its own thread (creation is collective: it waits for every rank).
class MOECOMM_API LocalWorld {
 public:
  explicit LocalWorld(int size);
  int size() const noexcept;

  struct State;
  const std::shared_ptr<State>& state() const noexcept { return state_; }

 private:
  std::shared_ptr<State> state_;
};

// A framework's own process group, plugged in as function pointers (the C ABI takes the same).
// Callbacks return 0 on success; any other value fails the group operation on this rank.
struct BootstrapCallbacks {
  int rank = -1;
  int size = 0;
  // Every rank contributes `bytes` from `send`; `recv` receives size * bytes in rank order.
  int (*all_gather)(const void* send, void* recv, size_t bytes, void* context) = nullptr;
  int (*barrier)(void* context) = nullptr;  // optional: a one-byte all_gather when null
  void* context = nullptr;
};

// Ranks that are processes (one World per process), found through a launcher's environment, an
// MPI communicator (moecomm/mpi.hpp) or a framework's callbacks. Groups made from one World
// share its bootstrap; the World must outlive its groups' creation only.
class MOECOMM_API World {
 public:
  // torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (each overridable by its
  // MOECOMM_ twin). Rank 0 serves a key-value store on MASTER_PORT; the others connect to it,
  // retrying until timeout_ms (0: MOECOMM_TIMEOUT_MS).
  static World fromEnv(int64_t timeout_ms = 0);
  static World fromCallbacks(const BootstrapCallbacks& callbacks);
  // `mpi_comm` points to an MPI_Comm; prefer moecomm::worldFromMpi(MPI_Comm) in moecomm/mpi.hpp.
  // Throws kInvalidUsage when this library was built without MPI.
  static World fromMpiComm(const void* mpi_comm);

  int rank() const noexcept;
  int size() const noexcept;
  int localRank() const noexcept;     // LOCAL_RANK under a launcher; the rank otherwise
  const char* kind() const noexcept;  // "env", "mpi" or "callback"

  struct State;
  const std::shared_ptr<State>& state() const noexcept { return state_; }

 private:
  std::shared_ptr<State> state_;
};

class MOECOMM_API Group {
 public:
  // Collective over the world's ranks. Every rank must pass the same num_experts, hidden, dtype,
  // topk and transport; a difference fails on every rank with a message naming the rank and the
  // field.
  static Group create(LocalWorld& world, int rank, const GroupConfig& config);
  // Collective over the world's processes; the same agreement rules apply.
  static Group create(World& world, const GroupConfig& config);

  int rank() const noexcept;
  int size() const noexcept;
  const GroupConfig& config() const noexcept;
  int localExperts() const noexcept;      // num_experts / size
  int firstLocalExpert() const noexcept;  // rank * localExperts()
  int expertOwner(int expert) const noexcept;
  const char* transportName() const noexcept;
  // The last error this rank's operations on the group raised ("" when none).
  std::string lastError() const;

  struct Impl;
  Impl& impl() const noexcept { return *impl_; }
  const std::shared_ptr<Impl>& sharedImpl() const noexcept { return impl_; }

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace moecomm
