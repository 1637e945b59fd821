#include <climits>

#include "kernels/cuda/stats.hpp"

namespace moecomm::cuda {

namespace {

constexpr int kStatsThreads = 256;

// One block: each thread takes experts in strides and sums what it drops, then thread 0 adds the
// partial sums in a fixed order (E is at most the gate's 1024, so this is microseconds).
__global__ void gatherKernel(StatsInputs in, int64_t* out) {
  __shared__ int64_t dropped[kStatsThreads];
  const int E = in.experts;
  int64_t mine = 0;
  for (int e = static_cast<int>(threadIdx.x); e < E; e += kStatsThreads) {
    const int64_t demand = in.demand[e];
    int64_t kept = demand;
    if (in.reroute_load != nullptr) {
      kept = in.reroute_load[e];
    } else if (in.capacity > 0 && demand > in.capacity) {
      kept = in.capacity;
      mine += demand - in.capacity;
    }
    out[e] = demand;
    out[E + e] = kept;
  }
  dropped[threadIdx.x] = mine;
  __syncthreads();
  if (threadIdx.x != 0) return;
  int64_t total = 0;
  for (int i = 0; i < kStatsThreads; ++i) total += dropped[i];
  const bool rerouted = in.reroute_load != nullptr;
  out[2 * E] = rerouted ? in.reroute_counters[1] : total;
  out[2 * E + 1] = rerouted ? in.reroute_counters[0] : 0;
  out[2 * E + 2] = *in.bad_token == INT_MAX ? -1 : *in.bad_token;
  out[2 * E + 3] =
      in.first_overflow == nullptr || *in.first_overflow == INT_MAX ? -1 : *in.first_overflow;
}

}  // namespace

cudaError_t gatherLoadStats(const StatsInputs& in, int64_t* out, cudaStream_t stream) {
  gatherKernel<<<1, kStatsThreads, 0, stream>>>(in, out);
  return cudaGetLastError();
}

}  // namespace moecomm::cuda
