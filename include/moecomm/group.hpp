// A Group is a set of ranks that exchange tokens: the object every operation takes. It owns the
// transport and the configuration every rank agreed on when it was created.
#pragma once

#include <memory>
#include <string>

#include "moecomm/export.hpp"
#include "moecomm/types.hpp"

namespace moecomm {

struct GroupConfig {
  int num_experts = 0;             // global experts; must divide evenly over the ranks
  int hidden = 0;                  // elements per token row
  DType dtype = DType::kBF16;      // dispatch payload dtype: f32 or bf16
  int topk = 0;                    // slots per token, 1..num_experts
  int64_t timeout_ms = 0;          // deadline of every wait; 0: MOECOMM_TIMEOUT_MS or 300000
  std::string transport = "auto";  // "auto" or "local"; also MOECOMM_TRANSPORT when "auto"
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

class MOECOMM_API Group {
 public:
  // Collective over the world's ranks. Every rank must pass the same num_experts, hidden, dtype,
  // topk and transport; a difference fails on every rank with a message naming the rank and the
  // field.
  static Group create(LocalWorld& world, int rank, const GroupConfig& config);

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
