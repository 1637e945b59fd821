#include <cub/device/device_histogram.cuh>
#include <cub/device/device_scan.cuh>

#include "kernels/cuda/layout.hpp"
#include "kernels/cuda/rows.cuh"
#include "kernels/cuda/scratch.hpp"

namespace moecomm::cuda {

namespace {

// One thread per (token, rank): does the token visit that rank?
__global__ void markKernel(const int32_t* idx, int64_t tokens, int topk, int experts, int ranks,
                           int32_t* flags, uint8_t* in_rank, int32_t* bad_slot,
                           int32_t* repeated_slot) {
  const int per_rank = experts / ranks;
  const int64_t n = tokens * ranks;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / ranks;
    const int r = static_cast<int>(i % ranks);
    int32_t hit = 0;
    for (int j = 0; j < topk; ++j) {
      const int32_t e = idx[t * topk + j];
      if (e < -1 || e >= experts) {
        if (bad_slot != nullptr && r == 0) atomicMin(bad_slot, static_cast<int32_t>(t * topk + j));
      } else if (e >= 0 && e / per_rank == r) {
        hit = 1;
      }
      if (repeated_slot != nullptr && r == 0 && e >= 0) {
        for (int i = 0; i < j; ++i) {
          if (idx[t * topk + i] == e) atomicMin(repeated_slot, static_cast<int32_t>(t * topk + j));
        }
      }
    }
    flags[static_cast<int64_t>(r) * tokens + t] = hit;
    in_rank[i] = static_cast<uint8_t>(hit);
  }
}

__global__ void positionsKernel(const int32_t* flags, const int32_t* scan, int64_t tokens,
                                int ranks, bool static_regions, int32_t* send_pos,
                                int32_t* rank_offsets, int32_t* tokens_per_rank) {
  const int64_t n = tokens * ranks;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // Static regions: rank r's block begins at r * T; its first token's scan is r's offset.
    const int64_t region = i / tokens * tokens;
    const int32_t pos =
        static_regions ? static_cast<int32_t>(region + scan[i] - scan[region]) : scan[i];
    send_pos[i] = flags[i] ? pos : -1;
  }
  if (blockIdx.x == 0) {
    for (int r = static_cast<int>(threadIdx.x); r <= ranks; r += blockDim.x) {
      int32_t begin = 0;
      if (tokens > 0) begin = r < ranks ? scan[r * tokens] : scan[n - 1] + flags[n - 1];
      rank_offsets[r] = begin;
    }
  }
  __syncthreads();
  if (blockIdx.x == 0) {
    for (int r = static_cast<int>(threadIdx.x); r < ranks; r += blockDim.x) {
      tokens_per_rank[r] = rank_offsets[r + 1] - rank_offsets[r];
    }
  }
}

// One block per token: the row is read once and stored to each rank it visits.
constexpr int kMaxPackRanks = 1024;

template <typename Unit>
__global__ void packKernel(const void* x, int64_t tokens, int64_t row_bytes, int ranks,
                           const int32_t* send_pos, void* send) {
  __shared__ int32_t dest[kMaxPackRanks];
  __shared__ int dest_count;
  const int64_t units = row_bytes / static_cast<int64_t>(sizeof(Unit));
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    __syncthreads();
    if (threadIdx.x == 0) {
      int count = 0;
      for (int r = 0; r < ranks; ++r) {
        const int32_t pos = send_pos[static_cast<int64_t>(r) * tokens + t];
        if (pos >= 0) dest[count++] = pos;
      }
      dest_count = count;
    }
    __syncthreads();
    const auto* src = reinterpret_cast<const Unit*>(static_cast<const char*>(x) + t * row_bytes);
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
      const Unit v = src[u];
      for (int d = 0; d < dest_count; ++d) {
        reinterpret_cast<Unit*>(static_cast<char*>(send) + dest[d] * row_bytes)[u] = v;
      }
    }
  }
}

__global__ void packRoutingKernel(const int32_t* idx, const float* weights, int64_t tokens,
                                  int topk, int experts, int ranks, const int32_t* send_pos,
                                  int32_t* send_experts, float* send_weights, int32_t* send_token) {
  const int per_rank = experts / ranks;
  const int64_t n = tokens * ranks;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t pos = send_pos[i];
    if (pos < 0) continue;
    const int r = static_cast<int>(i / tokens);
    const int64_t t = i % tokens;
    if (send_token != nullptr) send_token[pos] = static_cast<int32_t>(t);
    for (int j = 0; j < topk; ++j) {
      const int32_t e = idx[t * topk + j];
      const bool mine = e >= 0 && e / per_rank == r;
      send_experts[static_cast<int64_t>(pos) * topk + j] = mine ? e - r * per_rank : -1;
      send_weights[static_cast<int64_t>(pos) * topk + j] = mine ? weights[t * topk + j] : 0.0f;
    }
  }
}

__global__ void fillKernel(int32_t* values, int64_t n, int32_t value) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    values[i] = value;
  }
}

__global__ void widenKernel(const int32_t* in, int64_t n, int64_t* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = in[i] == INT32_MAX ? -1 : static_cast<int64_t>(in[i]);
  }
}

}  // namespace

cudaError_t fillInt32(int32_t* values, int64_t n, int32_t value, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  fillKernel<<<blocksFor(n), kThreads, 0, stream>>>(values, n, value);
  return cudaGetLastError();
}

cudaError_t widenCounts(const int32_t* in, int64_t n, int64_t* out, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  widenKernel<<<blocksFor(n), kThreads, 0, stream>>>(in, n, out);
  return cudaGetLastError();
}

cudaError_t computeLayout(const int32_t* topk_idx, int64_t tokens, int topk, int experts, int ranks,
                          const LayoutOutputs& out, cudaStream_t stream) {
  if (ranks < 1 || experts < 1 || experts % ranks != 0 || topk < 1 || tokens < 0 ||
      tokens * ranks >= INT32_MAX) {
    return cudaErrorInvalidValue;
  }
  StreamScratch scratch(stream);
  const int64_t n = tokens * ranks;
  int32_t* flags = nullptr;
  int32_t* scan = nullptr;
  MOECOMM_CUDA_TRY(scratch.take(static_cast<size_t>(n), &flags));
  MOECOMM_CUDA_TRY(scratch.take(static_cast<size_t>(n), &scan));
  markKernel<<<blocksFor(n), kThreads, 0, stream>>>(topk_idx, tokens, topk, experts, ranks, flags,
                                                    out.is_token_in_rank, out.bad_slot,
                                                    out.repeated_slot);
  MOECOMM_CUDA_TRY(cudaGetLastError());
  size_t temp_bytes = 0;
  void* temp = nullptr;
  if (n > 0) {
    MOECOMM_CUDA_TRY(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, flags, scan,
                                                   static_cast<int>(n), stream));
    MOECOMM_CUDA_TRY(scratch.take(temp_bytes, reinterpret_cast<char**>(&temp)));
    MOECOMM_CUDA_TRY(
        cub::DeviceScan::ExclusiveSum(temp, temp_bytes, flags, scan, static_cast<int>(n), stream));
  }
  positionsKernel<<<blocksFor(n), kThreads, 0, stream>>>(flags, scan, tokens, ranks,
                                                         out.static_regions, out.send_pos,
                                                         out.rank_offsets, out.tokens_per_rank);
  MOECOMM_CUDA_TRY(cudaGetLastError());
  return countExperts(topk_idx, tokens * topk, experts, out.tokens_per_expert, stream);
}

cudaError_t countExperts(const int32_t* idx, int64_t slots, int experts, int32_t* counts,
                         cudaStream_t stream) {
  if (experts < 1 || slots < 0 || slots >= INT32_MAX) return cudaErrorInvalidValue;
  // Slots marked -1 fall outside [0, E) and are not counted.
  MOECOMM_CUDA_TRY(cudaMemsetAsync(counts, 0, sizeof(int32_t) * experts, stream));
  if (slots == 0) return cudaSuccess;
  StreamScratch scratch(stream);
  size_t temp_bytes = 0;
  MOECOMM_CUDA_TRY(cub::DeviceHistogram::HistogramEven(
      nullptr, temp_bytes, idx, counts, experts + 1, 0, experts, static_cast<int>(slots), stream));
  char* temp = nullptr;
  MOECOMM_CUDA_TRY(scratch.take(temp_bytes, &temp));
  MOECOMM_CUDA_TRY(cub::DeviceHistogram::HistogramEven(
      temp, temp_bytes, idx, counts, experts + 1, 0, experts, static_cast<int>(slots), stream));
  return cudaSuccess;
}

cudaError_t packRows(const void* x, int64_t tokens, int64_t row_bytes, int ranks,
                     const int32_t* send_pos, void* send, cudaStream_t stream) {
  if (ranks < 1 || ranks > kMaxPackRanks) return cudaErrorInvalidValue;
  if (tokens == 0 || row_bytes == 0) return cudaSuccess;
  const int blocks = rowBlocks(tokens);
  switch (copyUnit(row_bytes, x, send)) {
    case 16:
      packKernel<int4>
          <<<blocks, kThreads, 0, stream>>>(x, tokens, row_bytes, ranks, send_pos, send);
      break;
    case 4:
      packKernel<uint32_t>
          <<<blocks, kThreads, 0, stream>>>(x, tokens, row_bytes, ranks, send_pos, send);
      break;
    default:
      packKernel<uint8_t>
          <<<blocks, kThreads, 0, stream>>>(x, tokens, row_bytes, ranks, send_pos, send);
      break;
  }
  return cudaGetLastError();
}

cudaError_t packRouting(const int32_t* topk_idx, const float* topk_weights, int64_t tokens,
                        int topk, int experts, int ranks, const int32_t* send_pos,
                        int32_t* send_experts, float* send_weights, int32_t* send_token,
                        cudaStream_t stream) {
  const int64_t n = tokens * ranks;
  if (n == 0) return cudaSuccess;
  packRoutingKernel<<<blocksFor(n), kThreads, 0, stream>>>(topk_idx, topk_weights, tokens, topk,
                                                           experts, ranks, send_pos, send_experts,
                                                           send_weights, send_token);
  return cudaGetLastError();
}

}  // namespace moecomm::cuda
