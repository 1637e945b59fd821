// The bootstrap of ranks that are threads of one process: a shared rendezvous in memory.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "moecomm/group.hpp"
#include "src/core/bootstrap.hpp"

namespace moecomm {

// The shared state behind a LocalWorld. After a timeout the world is broken: every later call on
// it fails at once with the first failure's message, so no rank waits for a rank that left.
struct LocalWorld::State {
  explicit State(int n)
      : size(n), arrived(static_cast<size_t>(n), false), slots(static_cast<size_t>(n)) {}
  const int size;
  std::mutex mutex;
  std::condition_variable cv;
  uint64_t generation = 0;
  int arrived_count = 0;
  size_t bytes = 0;
  std::vector<bool> arrived;
  std::vector<std::vector<std::byte>> slots;
  std::vector<std::byte> result;  // the last completed generation's gathered data
  std::string broken;
};

class InProcessBootstrap final : public Bootstrap {
 public:
  InProcessBootstrap(std::shared_ptr<LocalWorld::State> world, int rank)
      : world_(std::move(world)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return world_->size; }
  const char* kind() const override { return "threads"; }
  Status allGather(const void* in, void* out, size_t bytes, Deadline deadline) override;

 private:
  std::shared_ptr<LocalWorld::State> world_;
  int rank_;
};

}  // namespace moecomm
