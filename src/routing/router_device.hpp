// Routing CUDA logits: the gate runs as a CUDA kernel on the caller's stream; configurations the
// kernel does not cover (capacity, more experts than it holds) run on the CPU through pinned
// copies. Either way the result lives on the logits' GPU (docs/cuda.md).
#pragma once

#include "moecomm/router.hpp"

namespace moecomm {

// Throws moecomm::Error (the API edge).
Routing routeOnDevice(const Router& router, const TensorView& logits, const TensorView* bias,
                      ExecContext context);

}  // namespace moecomm
