// A routing's load statistics gathered into one i64 vector on the GPU, so that the host can read
// them with one copy, later or never (Router::routeOnStream). The layout is the public one of
// Routing::device_stats (include/moecomm/router.hpp):
//   [0, E)  demand per expert (assignments the gate chose)
//   [E, 2E) assignments kept per expert (after capacity and reroutes)
//   2E      slots dropped        2E + 1  slots rerouted
//   2E + 2  first token with a non-finite logit or bias, -1 when none
//   2E + 3  first slot past capacity in claim order (OverflowPolicy::kError), -1 when none
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moecomm::cuda {

struct StatsInputs {
  const int32_t* demand = nullptr;            // [E]
  const int32_t* reroute_load = nullptr;      // [E] after rerouting, or null
  const int32_t* reroute_counters = nullptr;  // [2] rerouted, dropped; with reroute_load
  const int32_t* bad_token = nullptr;         // [1] INT32_MAX when none
  const int32_t* first_overflow = nullptr;    // [1] INT32_MAX when none; null: not kError
  int experts = 0;
  int64_t capacity = 0;  // 0: dropless; else kept = min(demand, capacity) without reroute_load
};

// out [2E + 4] as above.
cudaError_t gatherLoadStats(const StatsInputs& in, int64_t* out, cudaStream_t stream);

}  // namespace moecomm::cuda
