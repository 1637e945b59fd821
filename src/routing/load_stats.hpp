// Routing::device_stats and LoadStats: one i64 vector (layout in moecomm/router.hpp) that the GPU
// fills without a host wait, and the host's reading of it, which raises the errors route() raises.
#pragma once

#include <cstdint>

#include "moecomm/router.hpp"
#include "src/core/status.hpp"

namespace moecomm {

// device_stats on the host for statistics the host already has (no deferred error).
Tensor encodeLoadStats(const LoadStats& stats, int experts);

// LoadStats from a host copy of device_stats for `tokens` tokens of `routing`. A non-finite
// token or an overflow under OverflowPolicy::kError becomes route()'s error (the expert named by
// the overflow is read from routing.topk_idx, on whichever device it is).
Status decodeLoadStats(const RouterOptions& options, const int64_t* values, int experts,
                       int64_t tokens, const Routing& routing, LoadStats* out);

}  // namespace moecomm
