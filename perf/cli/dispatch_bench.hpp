// moecomm-perf dispatch: dispatch and combine with DeepEP-like knobs and skewed routings.
#pragma once

#include <random>
#include <vector>

#include "perf/cli/perf_options.hpp"
#include "perf/cli/perf_world.hpp"

namespace moecomm::perf {

// topk_idx [T, k] for one rank: distinct experts per token from the named distribution.
std::vector<int32_t> makeRouting(const std::string& routing, int tokens, int experts, int topk,
                                 std::mt19937& rng);

// Exit status: 0 ok, 1 wrong data, 2 bad usage.
int runDispatch(const DispatchBenchOptions& options, RankContext& context);

}  // namespace moecomm::perf
