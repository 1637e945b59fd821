// The bootstrap of processes started without MPI: torchrun's variables name the rank, the world
// size and rank 0's store; the collectives are keys written to and polled from that store.
#pragma once

#include <memory>
#include <string>

#include "src/bootstrap/tcp_store.hpp"
#include "src/core/bootstrap.hpp"

namespace moecomm {

struct LaunchEnv {
  int rank = -1;
  int size = 0;
  int local_rank = -1;
  std::string master_addr;
  int master_port = 0;
};

// Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, each overridden by its
// MOECOMM_-prefixed twin; fails naming the variable that is missing or malformed.
Status readLaunchEnv(LaunchEnv* out);

class StoreBootstrap final : public Bootstrap {
 public:
  // Rank 0 starts the store; every rank connects to it before the deadline.
  static Status create(const LaunchEnv& env, Deadline deadline, std::unique_ptr<Bootstrap>* out);
  ~StoreBootstrap() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* kind() const override { return "env"; }
  Status allGather(const void* in, void* out, size_t bytes, Deadline deadline) override;

 private:
  StoreBootstrap() = default;
  int rank_ = 0;
  int size_ = 1;
  uint64_t generation_ = 0;
  std::unique_ptr<TcpStoreServer> server_;  // rank 0 only
  std::unique_ptr<TcpStoreClient> client_;
};

}  // namespace moecomm
