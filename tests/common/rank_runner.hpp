// Runs one function per rank, each on its own thread over one LocalWorld, and rethrows the first
// failure on the caller's thread so gtest reports it.
#pragma once

#include <moecomm/moecomm.hpp>

#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace moecomm::testing {

inline void runRanks(int ranks, const std::function<void(LocalWorld&, int)>& body) {
  LocalWorld world(ranks);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        body(world, r);
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

}  // namespace moecomm::testing
