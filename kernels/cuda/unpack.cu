#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/rows.cuh"
#include "kernels/cuda/scratch.hpp"
#include "kernels/cuda/unpack.hpp"

namespace moecomm::cuda {

namespace {

// Sort keys: the local expert, or L for slots of other ranks (they sort last); values: slot ids.
__global__ void keysKernel(const int32_t* recv_experts, int64_t slots, int local_experts,
                           uint32_t* keys, int32_t* values, int32_t* slot_row) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < slots;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t e = recv_experts[i];
    keys[i] = e >= 0 && e < local_experts ? static_cast<uint32_t>(e)
                                          : static_cast<uint32_t>(local_experts);
    values[i] = static_cast<int32_t>(i);
    slot_row[i] = -1;
  }
}

// The expert table: demand from the sorted keys' segment boundaries, then counts, offsets and
// refusals. L is small (experts of one rank), so one thread walks it in order.
__global__ void tableKernel(const uint32_t* sorted_keys, int64_t slots, UnpackOptions o,
                            int32_t* segment_start, UnpackPlan plan) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  const int L = o.local_experts;
  // Segment starts by binary search: the first sorted key >= e.
  for (int e = 0; e <= L; ++e) {
    int64_t lo = 0;
    int64_t hi = slots;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (sorted_keys[mid] < static_cast<uint32_t>(e)) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    segment_start[e] = static_cast<int32_t>(lo);
  }
  int64_t offset = 0;
  int64_t refused = 0;
  for (int e = 0; e < L; ++e) {
    const int64_t demand = segment_start[e + 1] - segment_start[e];
    const int64_t count = o.capacity > 0 && demand > o.capacity ? o.capacity : demand;
    const int64_t span = o.pad_to_capacity ? o.capacity : count;
    plan.expert_demand[e] = static_cast<int32_t>(demand);
    plan.expert_counts[e] = static_cast<int32_t>(count);
    plan.expert_offsets[e] = static_cast<int32_t>(offset);
    offset += (span + o.alignment - 1) / o.alignment * o.alignment;
    refused += demand - count;
  }
  plan.expert_offsets[L] = static_cast<int32_t>(offset);
  *plan.refused = static_cast<int32_t>(refused);
  *plan.overflow = offset > o.max_rows ? static_cast<int32_t>(offset) : 0;
}

__global__ void scatterKernel(const uint32_t* sorted_keys, const int32_t* sorted_slots,
                              const int32_t* segment_start, int64_t slots, int local_experts,
                              int64_t max_rows, UnpackPlan plan) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < slots;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t e = sorted_keys[i];
    if (e >= static_cast<uint32_t>(local_experts)) continue;
    const int64_t rank = i - segment_start[e];
    if (rank >= plan.expert_counts[e]) continue;  // refused: stays -1
    const int64_t row = plan.expert_offsets[e] + rank;
    if (row >= max_rows) continue;  // overflow is reported; nothing is written past the buffer
    plan.slot_row[sorted_slots[i]] = static_cast<int32_t>(row);
    plan.row_source[row] = sorted_slots[i];
  }
}

// One block per output row of the layout.
template <typename Unit>
__global__ void unpackKernel(const void* recv, const float* recv_weights, int topk,
                             int64_t row_bytes, const int32_t* row_source,
                             const int32_t* total_rows, int64_t max_rows, void* out,
                             float* row_weights) {
  const int64_t rows = *total_rows < max_rows ? *total_rows : max_rows;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int32_t slot = row_source[row];
    void* dst = static_cast<char*>(out) + row * row_bytes;
    if (slot < 0) {
      zeroRowUnits<Unit>(dst, row_bytes, static_cast<int>(threadIdx.x), blockDim.x);
    } else {
      const void* src = static_cast<const char*>(recv) + (slot / topk) * row_bytes;
      copyRowUnits<Unit>(dst, src, row_bytes, static_cast<int>(threadIdx.x), blockDim.x);
    }
    if (threadIdx.x == 0 && row_weights != nullptr) {
      row_weights[row] = slot < 0 ? 0.0f : recv_weights[slot];
    }
  }
}

__global__ void keptRoutingKernel(const int32_t* recv_experts, const float* recv_weights,
                                  const int32_t* slot_row, int64_t slots, int32_t* topk_idx,
                                  float* topk_weights) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < slots;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool kept = slot_row[i] >= 0;
    topk_idx[i] = kept ? recv_experts[i] : -1;
    topk_weights[i] = kept ? recv_weights[i] : 0.0f;
  }
}

}  // namespace

cudaError_t planUnpack(const int32_t* recv_experts, int64_t rows_in, int topk,
                       const UnpackOptions& options, const UnpackPlan& plan, cudaStream_t stream) {
  const int L = options.local_experts;
  if (L < 1 || topk < 1 || options.alignment < 1 || options.capacity < 0 || rows_in < 0 ||
      (options.pad_to_capacity && options.capacity == 0) || rows_in * topk >= INT32_MAX ||
      options.max_rows >= INT32_MAX) {
    return cudaErrorInvalidValue;
  }
  const int64_t slots = rows_in * topk;
  StreamScratch scratch(stream);
  uint32_t* keys = nullptr;
  uint32_t* sorted_keys = nullptr;
  int32_t* values = nullptr;
  int32_t* sorted_values = nullptr;
  int32_t* segment_start = nullptr;
  MOECOMM_CUDA_TRY(scratch.take(static_cast<size_t>(slots), &keys));
  MOECOMM_CUDA_TRY(scratch.take(static_cast<size_t>(slots), &sorted_keys));
  MOECOMM_CUDA_TRY(scratch.take(static_cast<size_t>(slots), &values));
  MOECOMM_CUDA_TRY(scratch.take(static_cast<size_t>(slots), &sorted_values));
  MOECOMM_CUDA_TRY(scratch.take(static_cast<size_t>(L) + 1, &segment_start));
  if (options.max_rows > 0) {
    MOECOMM_CUDA_TRY(cudaMemsetAsync(
        plan.row_source, 0xff, sizeof(int32_t) * static_cast<size_t>(options.max_rows), stream));
  }
  keysKernel<<<blocksFor(slots), kThreads, 0, stream>>>(recv_experts, slots, L, keys, values,
                                                        plan.slot_row);
  MOECOMM_CUDA_TRY(cudaGetLastError());
  int end_bit = 1;
  while ((1 << end_bit) <= L) ++end_bit;
  if (slots > 0) {
    size_t temp_bytes = 0;
    MOECOMM_CUDA_TRY(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys, sorted_keys, values,
                                                     sorted_values, static_cast<int>(slots), 0,
                                                     end_bit, stream));
    char* temp = nullptr;
    MOECOMM_CUDA_TRY(scratch.take(temp_bytes, &temp));
    MOECOMM_CUDA_TRY(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, sorted_keys, values,
                                                     sorted_values, static_cast<int>(slots), 0,
                                                     end_bit, stream));
  }
  tableKernel<<<1, 1, 0, stream>>>(sorted_keys, slots, options, segment_start, plan);
  MOECOMM_CUDA_TRY(cudaGetLastError());
  if (slots > 0) {
    scatterKernel<<<blocksFor(slots), kThreads, 0, stream>>>(
        sorted_keys, sorted_values, segment_start, slots, L, options.max_rows, plan);
    MOECOMM_CUDA_TRY(cudaGetLastError());
  }
  return cudaSuccess;
}

cudaError_t unpackRows(const void* recv, const float* recv_weights, int topk, int64_t row_bytes,
                       const UnpackPlan& plan, int local_experts, int64_t max_rows, void* out,
                       float* row_weights, cudaStream_t stream) {
  if (max_rows == 0) return cudaSuccess;
  const int blocks = rowBlocks(max_rows);
  const int32_t* total = plan.expert_offsets + local_experts;
  switch (copyUnit(row_bytes, recv, out)) {
    case 16:
      unpackKernel<int4><<<blocks, kThreads, 0, stream>>>(
          recv, recv_weights, topk, row_bytes, plan.row_source, total, max_rows, out, row_weights);
      break;
    case 4:
      unpackKernel<uint32_t><<<blocks, kThreads, 0, stream>>>(
          recv, recv_weights, topk, row_bytes, plan.row_source, total, max_rows, out, row_weights);
      break;
    default:
      unpackKernel<uint8_t><<<blocks, kThreads, 0, stream>>>(
          recv, recv_weights, topk, row_bytes, plan.row_source, total, max_rows, out, row_weights);
      break;
  }
  return cudaGetLastError();
}

cudaError_t keptRouting(const int32_t* recv_experts, const float* recv_weights,
                        const int32_t* slot_row, int64_t slots, int32_t* topk_idx,
                        float* topk_weights, cudaStream_t stream) {
  if (slots == 0) return cudaSuccess;
  keptRoutingKernel<<<blocksFor(slots), kThreads, 0, stream>>>(recv_experts, recv_weights, slot_row,
                                                               slots, topk_idx, topk_weights);
  return cudaGetLastError();
}

}  // namespace moecomm::cuda
