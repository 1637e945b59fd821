// Every wait in moecomm has a deadline. A Deadline is an absolute steady-clock point.
#pragma once

#include <chrono>
#include <cstdint>

namespace moecomm {

class Deadline {
 public:
  using Clock = std::chrono::steady_clock;
  static Deadline afterMs(int64_t ms) {
    return Deadline(Clock::now() + std::chrono::milliseconds(ms));
  }
  Clock::time_point when() const { return when_; }
  bool expired() const { return Clock::now() >= when_; }

 private:
  explicit Deadline(Clock::time_point when) : when_(when) {}
  Clock::time_point when_;
};

}  // namespace moecomm
