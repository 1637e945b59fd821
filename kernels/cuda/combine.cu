#include "kernels/cuda/combine.hpp"
#include "kernels/cuda/rows.cuh"

namespace moecomm::cuda {

namespace {

constexpr int kMaxSources = 1024;  // slots per row (k) or ranks per token gathered in shared memory

// out_row = sum_s weight[s] * rows[s], f32 accumulation, `Width` elements per thread step
// (a 16-byte vector, or 1 for the tail-safe path).
template <typename T, int Width>
__device__ void weightedSum(const T* const* rows, const float* weight, int sources, int64_t hidden,
                            T* out_row) {
  const int64_t steps = hidden / Width;
  for (int64_t s = threadIdx.x; s < steps; s += blockDim.x) {
    float acc[Width];
    for (int i = 0; i < Width; ++i) acc[i] = 0.0f;
    for (int src = 0; src < sources; ++src) {
      // Rounded multiply, then rounded add (no fused multiply-add): the CPU's arithmetic, so
      // both give the same bits.
      if constexpr (Width == 1) {
        acc[0] = __fadd_rn(acc[0], __fmul_rn(weight[src], toFloat(rows[src][s])));
      } else {
        const Vec<T> v = reinterpret_cast<const Vec<T>*>(rows[src])[s];
        for (int i = 0; i < Width; ++i) {
          acc[i] = __fadd_rn(acc[i], __fmul_rn(weight[src], toFloat(v.v[i])));
        }
      }
    }
    if constexpr (Width == 1) {
      fromFloat(acc[0], &out_row[s]);
    } else {
      Vec<T> v;
      for (int i = 0; i < Width; ++i) fromFloat(acc[i], &v.v[i]);
      reinterpret_cast<Vec<T>*>(out_row)[s] = v;
    }
  }
}

template <typename T, int Width>
__global__ void expertSideKernel(const T* y, int64_t hidden, int64_t rows_in, int topk,
                                 const int32_t* slot_row, const float* row_weights, T* partial) {
  __shared__ const T* rows[kMaxSources];
  __shared__ float weight[kMaxSources];
  __shared__ int sources;
  for (int64_t i = blockIdx.x; i < rows_in; i += gridDim.x) {
    __syncthreads();
    if (threadIdx.x == 0) {
      int n = 0;
      for (int j = 0; j < topk; ++j) {
        const int32_t row = slot_row[i * topk + j];
        if (row >= 0) {
          rows[n] = y + row * hidden;
          weight[n] = row_weights != nullptr ? row_weights[row] : 1.0f;
          ++n;
        }
      }
      sources = n;
    }
    __syncthreads();
    weightedSum<T, Width>(rows, weight, sources, hidden, partial + i * hidden);
  }
}

template <typename T, int Width>
__global__ void reduceKernel(const T* back, int64_t hidden, int64_t tokens, int ranks,
                             const int32_t* send_pos, T* out) {
  __shared__ const T* rows[kMaxSources];
  __shared__ float weight[kMaxSources];
  __shared__ int sources;
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    __syncthreads();
    if (threadIdx.x == 0) {
      int n = 0;
      for (int r = 0; r < ranks; ++r) {
        const int32_t pos = send_pos[static_cast<int64_t>(r) * tokens + t];
        if (pos >= 0) {
          rows[n] = back + pos * hidden;
          weight[n] = 1.0f;
          ++n;
        }
      }
      sources = n;
    }
    __syncthreads();
    weightedSum<T, Width>(rows, weight, sources, hidden, out + t * hidden);
  }
}

template <typename T>
bool vectorizable(int64_t hidden, const void* a, const void* b) {
  return copyUnit(hidden * static_cast<int64_t>(sizeof(T)), a, b) == 16;
}

template <typename T>
cudaError_t launchExpertSide(const void* y, int64_t hidden, int64_t rows_in, int topk,
                             const int32_t* slot_row, const float* row_weights, void* partial,
                             cudaStream_t stream) {
  const T* yt = static_cast<const T*>(y);
  T* pt = static_cast<T*>(partial);
  if (vectorizable<T>(hidden, y, partial)) {
    expertSideKernel<T, kLanes<T>><<<rowBlocks(rows_in), kThreads, 0, stream>>>(
        yt, hidden, rows_in, topk, slot_row, row_weights, pt);
  } else {
    expertSideKernel<T, 1><<<rowBlocks(rows_in), kThreads, 0, stream>>>(yt, hidden, rows_in, topk,
                                                                        slot_row, row_weights, pt);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launchReduce(const void* back, int64_t hidden, int64_t tokens, int ranks,
                         const int32_t* send_pos, void* out, cudaStream_t stream) {
  const T* bt = static_cast<const T*>(back);
  T* ot = static_cast<T*>(out);
  if (vectorizable<T>(hidden, back, out)) {
    reduceKernel<T, kLanes<T>>
        <<<rowBlocks(tokens), kThreads, 0, stream>>>(bt, hidden, tokens, ranks, send_pos, ot);
  } else {
    reduceKernel<T, 1>
        <<<rowBlocks(tokens), kThreads, 0, stream>>>(bt, hidden, tokens, ranks, send_pos, ot);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t combineExpertSide(const void* y, RowType type, int64_t hidden, int64_t rows_in,
                              int topk, const int32_t* slot_row, const float* row_weights,
                              void* partial, cudaStream_t stream) {
  if (topk < 1 || topk > kMaxSources || hidden < 0) return cudaErrorInvalidValue;
  if (rows_in == 0 || hidden == 0) return cudaSuccess;
  return type == RowType::kBF16 ? launchExpertSide<uint16_t>(y, hidden, rows_in, topk, slot_row,
                                                             row_weights, partial, stream)
                                : launchExpertSide<float>(y, hidden, rows_in, topk, slot_row,
                                                          row_weights, partial, stream);
}

cudaError_t combineReduce(const void* back, RowType type, int64_t hidden, int64_t tokens, int ranks,
                          const int32_t* send_pos, void* out, cudaStream_t stream) {
  if (ranks < 1 || ranks > kMaxSources || hidden < 0) return cudaErrorInvalidValue;
  if (tokens == 0 || hidden == 0) return cudaSuccess;
  return type == RowType::kBF16
             ? launchReduce<uint16_t>(back, hidden, tokens, ranks, send_pos, out, stream)
             : launchReduce<float>(back, hidden, tokens, ranks, send_pos, out, stream);
}

}  // namespace moecomm::cuda
