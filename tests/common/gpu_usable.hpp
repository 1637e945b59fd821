// Whether this process can allocate on GPU 0: the CPU suites skip what tests/gpu covers there.
#pragma once

#include "moecomm/error.hpp"
#include "moecomm/types.hpp"

namespace moecomm::testing {

inline bool gpuUsable() {
  try {
    (void)Tensor::empty({1}, DType::kF32, Device::cuda(0));
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace moecomm::testing
