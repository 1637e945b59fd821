// Lap times for phase breakdowns (wall clock, milliseconds).
#pragma once

#include <chrono>

namespace moecomm {

class Stopwatch {
 public:
  // Milliseconds since the previous lap (or construction).
  double lap() {
    auto now = std::chrono::steady_clock::now();
    double ms = std::chrono::duration<double, std::milli>(now - last_).count();
    last_ = now;
    return ms;
  }

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

}  // namespace moecomm
