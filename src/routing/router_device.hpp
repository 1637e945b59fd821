// Routing CUDA logits: the gate runs as a CUDA kernel on the caller's stream; configurations the
// kernel does not cover (capacity, more experts than it holds) run on the CPU through pinned
// copies. Either way the result lives on the logits' GPU (docs/cuda.md).
#pragma once

#include "moecomm/router.hpp"

namespace moecomm {

// The gate, capacity and statistics ordered on the context's stream, with no host wait:
// routing.stats stays empty and routing.device_stats holds them (Router::collectStats reads them).
// Configurations the kernels do not cover go through the CPU router and wait (stats filled).
// Throws moecomm::Error (the API edge).
Routing routeOnDeviceNoWait(const Router& router, const TensorView& logits, const TensorView* bias,
                            ExecContext context);

}  // namespace moecomm
