// Where a test's ranks come from. By default they are threads over one LocalWorld. When a launcher
// started this binary once per rank (MOECOMM_TEST_PROCESSES=env under scripts/moecomm-launch,
// =mpi under mpirun), this process is one rank of a World and a case written for another rank
// count is skipped. MOECOMM_TEST_TRANSPORT, when set, is the transport of every group a test
// makes, so one suite runs unchanged on local, ucx and mpi.
#pragma once

#include <gtest/gtest.h>
#include <moecomm/moecomm.hpp>

#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace moecomm::testing {

// The process World of a launched test binary (test_main.cpp creates and destroys it).
std::optional<World>& processWorld();
inline bool launchedAsProcesses() {
  return processWorld().has_value();
}

// Runs fn(rank) on one thread per rank and rethrows the first failure on the caller's thread, so
// gtest reports it.
inline void onThreads(int ranks, const std::function<void(int)>& fn) {
  std::vector<std::exception_ptr> errors(static_cast<size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// Whether `rank` runs in this process (always between threads; only our own rank when launched).
inline bool rankRunsHere(int rank) {
  return !launchedAsProcesses() || processWorld()->rank() == rank;
}

class RankWorld {
 public:
  explicit RankWorld(LocalWorld* local) : local_(local) {}
  // Makes this rank's group. The transport is MOECOMM_TEST_TRANSPORT when set; otherwise the
  // config's own between threads and "auto" between processes.
  Group group(int rank, GroupConfig config) {
    if (const char* forced = std::getenv("MOECOMM_TEST_TRANSPORT")) {
      config.transport = forced;
    } else if (local_ == nullptr) {
      config.transport = "auto";
    }
    if (local_ != nullptr) return Group::create(*local_, rank, config);
    return Group::create(*processWorld(), config);
  }

 private:
  LocalWorld* local_;
};

inline void runRanks(int ranks, const std::function<void(RankWorld&, int)>& body) {
  if (launchedAsProcesses()) {
    World& world = *processWorld();
    if (world.size() != ranks) {
      GTEST_SKIP() << "written for " << ranks << " ranks; this launch has " << world.size();
    }
    RankWorld rank_world(nullptr);
    body(rank_world, world.rank());
    return;
  }
  LocalWorld local(ranks);
  RankWorld rank_world(&local);
  onThreads(ranks, [&](int r) { body(rank_world, r); });
}

// Threads over a LocalWorld, for tests of the in-process machinery itself.
inline void runThreads(int ranks, const std::function<void(LocalWorld&, int)>& body) {
  LocalWorld world(ranks);
  onThreads(ranks, [&](int r) { body(world, r); });
}

}  // namespace moecomm::testing
