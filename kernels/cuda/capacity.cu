#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "kernels/cuda/capacity.hpp"
#include "kernels/cuda/layout.hpp"
#include "kernels/cuda/rows.cuh"
#include "kernels/cuda/scratch.hpp"

namespace moecomm::cuda {

namespace {

__global__ void iotaKernel(int32_t* values, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    values[i] = static_cast<int32_t>(i);
  }
}

// Claim position p holds slot order[p]; its key is the slot's expert (E for unused slots, which
// sort last).
__global__ void expertKeysKernel(const int32_t* idx, const int32_t* order, int64_t n, int experts,
                                 uint32_t* keys, int32_t* positions) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < n;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t e = idx[order[p]];
    keys[p] = e >= 0 ? static_cast<uint32_t>(e) : static_cast<uint32_t>(experts);
    positions[p] = static_cast<int32_t>(p);
  }
}

// In expert-then-claim order: the i-th entry of expert e's queue is kept when i < capacity.
// overflowed (may be null) gets a 1 at the claim position of every assignment past capacity.
__global__ void claimKernel(const uint32_t* keys, const int32_t* positions, const int32_t* order,
                            const int32_t* starts, int64_t n, int experts, int64_t capacity,
                            bool drop, int32_t* idx, float* weights, int32_t* first_overflow,
                            uint8_t* overflowed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t e = keys[i];
    if (e >= static_cast<uint32_t>(experts)) continue;
    if (i - starts[e] < capacity) continue;
    const int32_t p = positions[i];
    atomicMin(first_overflow, p);  // the claim position; mapped to its slot below
    if (overflowed != nullptr) overflowed[p] = 1;
    if (drop) {
      idx[order[p]] = -1;
      weights[order[p]] = 0.0f;
    }
  }
}

__global__ void slotOfClaimKernel(const int32_t* order, int32_t* first_overflow) {
  if (*first_overflow != INT32_MAX) *first_overflow = order[*first_overflow];
}

// One warp: the overflowing claims (already dropped to -1 / 0 by claimKernel), in claim order.
// Each takes its token's first candidate with room that the token does not use; lane 0 does the
// sequential part, the ballot skips the claims that kept their expert 32 at a time. A token's own
// dropped slot reads -1 here where the CPU still sees its full expert: no candidate can be that
// expert anyway (it has no room), so the choices are the same.
__global__ void rerouteKernel(const int32_t* order, const uint8_t* overflowed, int64_t n,
                              const int32_t* demand, int experts, int64_t capacity, int32_t* idx,
                              float* weights, Reroute r) {
  extern __shared__ int32_t load[];
  const unsigned lane = threadIdx.x;
  for (int e = static_cast<int>(lane); e < experts; e += 32) {
    load[e] = static_cast<int32_t>(min(static_cast<int64_t>(demand[e]), capacity));
  }
  __syncwarp();
  int32_t rerouted = 0, dropped = 0;
  for (int64_t base = 0; base < n; base += 32) {
    const int64_t p = base + lane;
    unsigned pending = __ballot_sync(0xffffffffu, p < n && overflowed[p] != 0);
    while (pending != 0) {
      const int bit = __ffs(static_cast<int>(pending)) - 1;
      pending &= pending - 1;
      if (lane == 0) {
        const int32_t a = order[base + bit];
        const int64_t t = a / r.topk;
        int32_t target = -1;
        float weight = 0.0f;
        for (int i = 0; i < r.candidates && target < 0; ++i) {
          const int32_t e = r.candidate_idx[t * r.candidates + i];
          if (e < 0 || load[e] >= capacity) continue;
          bool used = false;
          for (int j = 0; j < r.topk; ++j) used = used || idx[t * r.topk + j] == e;
          if (used) continue;
          target = e;
          weight = r.candidate_weights[t * r.candidates + i];
        }
        idx[a] = target;
        weights[a] = weight;
        if (target >= 0) {
          ++load[target];
          ++rerouted;
        } else {
          ++dropped;
        }
      }
      __syncwarp();
    }
  }
  for (int e = static_cast<int>(lane); e < experts; e += 32) r.load[e] = load[e];
  if (lane == 0) {
    r.counters[0] = rerouted;
    r.counters[1] = dropped;
  }
}

}  // namespace

cudaError_t applyCapacity(int32_t* idx, float* weights, int64_t slots, int experts,
                          int64_t capacity, bool by_probability, bool drop,
                          const CapacityOutputs& out, const Reroute* reroute, cudaStream_t stream) {
  if (experts < 1 || capacity < 1 || slots < 0 || slots >= INT32_MAX ||
      (reroute != nullptr && (!drop || reroute->topk < 1 || reroute->candidates < 0 ||
                              reroute->load == nullptr || reroute->counters == nullptr))) {
    return cudaErrorInvalidValue;
  }
  MOECOMM_CUDA_TRY(countExperts(idx, slots, experts, out.demand, stream));
  if (reroute != nullptr) {  // what the outputs say when nothing overflows (or nothing is routed)
    MOECOMM_CUDA_TRY(cudaMemsetAsync(reroute->counters, 0, 2 * sizeof(int32_t), stream));
    MOECOMM_CUDA_TRY(cudaMemcpyAsync(reroute->load, out.demand, sizeof(int32_t) * experts,
                                     cudaMemcpyDeviceToDevice, stream));
  }
  if (slots == 0) return cudaSuccess;
  StreamScratch scratch(stream);
  const int n = static_cast<int>(slots);
  int32_t* order = nullptr;
  int32_t* order_tmp = nullptr;
  float* sorted_weights = nullptr;
  uint32_t* keys = nullptr;
  uint32_t* sorted_keys = nullptr;
  int32_t* positions = nullptr;
  int32_t* sorted_positions = nullptr;
  int32_t* starts = nullptr;
  uint8_t* overflowed = nullptr;
  MOECOMM_CUDA_TRY(scratch.take(slots, &order));
  MOECOMM_CUDA_TRY(scratch.take(slots, &order_tmp));
  MOECOMM_CUDA_TRY(scratch.take(slots, &sorted_weights));
  MOECOMM_CUDA_TRY(scratch.take(slots, &keys));
  MOECOMM_CUDA_TRY(scratch.take(slots, &sorted_keys));
  MOECOMM_CUDA_TRY(scratch.take(slots, &positions));
  MOECOMM_CUDA_TRY(scratch.take(slots, &sorted_positions));
  MOECOMM_CUDA_TRY(scratch.take(static_cast<size_t>(experts), &starts));
  if (reroute != nullptr) {
    MOECOMM_CUDA_TRY(scratch.take(slots, &overflowed));
    MOECOMM_CUDA_TRY(cudaMemsetAsync(overflowed, 0, static_cast<size_t>(slots), stream));
  }
  iotaKernel<<<blocksFor(slots), kThreads, 0, stream>>>(order_tmp, slots);
  MOECOMM_CUDA_TRY(cudaGetLastError());
  char* temp = nullptr;
  size_t temp_bytes = 0;
  if (by_probability) {
    // Claim order: weight descending; the radix sort is stable, so ties keep slot order.
    MOECOMM_CUDA_TRY(cub::DeviceRadixSort::SortPairsDescending(
        nullptr, temp_bytes, weights, sorted_weights, order_tmp, order, n, 0, 32, stream));
    MOECOMM_CUDA_TRY(scratch.take(temp_bytes, &temp));
    MOECOMM_CUDA_TRY(cub::DeviceRadixSort::SortPairsDescending(
        temp, temp_bytes, weights, sorted_weights, order_tmp, order, n, 0, 32, stream));
  } else {
    MOECOMM_CUDA_TRY(cudaMemcpyAsync(order, order_tmp, sizeof(int32_t) * slots,
                                     cudaMemcpyDeviceToDevice, stream));
  }
  expertKeysKernel<<<blocksFor(slots), kThreads, 0, stream>>>(idx, order, slots, experts, keys,
                                                              positions);
  MOECOMM_CUDA_TRY(cudaGetLastError());
  int end_bit = 1;
  while ((1 << end_bit) <= experts) ++end_bit;
  temp_bytes = 0;
  MOECOMM_CUDA_TRY(cub::DeviceRadixSort::SortPairs(
      nullptr, temp_bytes, keys, sorted_keys, positions, sorted_positions, n, 0, end_bit, stream));
  MOECOMM_CUDA_TRY(scratch.take(temp_bytes, &temp));
  MOECOMM_CUDA_TRY(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, sorted_keys, positions,
                                                   sorted_positions, n, 0, end_bit, stream));
  // Queue starts: the exclusive scan of the demand.
  temp_bytes = 0;
  MOECOMM_CUDA_TRY(
      cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, out.demand, starts, experts, stream));
  MOECOMM_CUDA_TRY(scratch.take(temp_bytes, &temp));
  MOECOMM_CUDA_TRY(
      cub::DeviceScan::ExclusiveSum(temp, temp_bytes, out.demand, starts, experts, stream));
  claimKernel<<<blocksFor(slots), kThreads, 0, stream>>>(
      sorted_keys, sorted_positions, order, starts, slots, experts, capacity, drop, idx, weights,
      out.first_overflow, overflowed);
  MOECOMM_CUDA_TRY(cudaGetLastError());
  slotOfClaimKernel<<<1, 1, 0, stream>>>(order, out.first_overflow);
  MOECOMM_CUDA_TRY(cudaGetLastError());
  if (reroute != nullptr) {
    rerouteKernel<<<1, 32, sizeof(int32_t) * static_cast<size_t>(experts), stream>>>(
        order, overflowed, slots, out.demand, experts, capacity, idx, weights, *reroute);
    MOECOMM_CUDA_TRY(cudaGetLastError());
  }
  return cudaSuccess;
}

}  // namespace moecomm::cuda
