// moecomm-perf alltoall: an nccl-tests-style sweep of the all-to-all over one transport.
#pragma once

#include "perf/cli/perf_options.hpp"
#include "perf/cli/perf_world.hpp"

namespace moecomm::perf {

// Exit status: 0 ok, 1 wrong data, 2 bad usage, 3 below MOECOMM_PERF_MIN_BW.
int runAlltoall(const AlltoallOptions& options, RankContext& context);

}  // namespace moecomm::perf
