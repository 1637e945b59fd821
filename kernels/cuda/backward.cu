#include "kernels/cuda/backward.hpp"
#include "kernels/cuda/rows.cuh"

namespace moecomm::cuda {

namespace {

template <typename T>
__global__ void scaleKernel(const T* incoming, int64_t hidden, int topk, const int32_t* row_source,
                            const float* row_weights, const int32_t* total_rows, int64_t max_rows,
                            T* grad_y) {
  const int64_t rows = *total_rows < max_rows ? *total_rows : max_rows;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int32_t slot = row_source[row];
    T* dst = grad_y + row * hidden;
    if (slot < 0) {
      for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x) fromFloat(0.0f, &dst[h]);
      continue;
    }
    const float w = row_weights[row];
    const T* src = incoming + (slot / topk) * hidden;
    for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x) {
      fromFloat(__fmul_rn(w, toFloat(src[h])), &dst[h]);
    }
  }
}

// One block per received row; a block-wide f64 sum per kept slot.
template <typename T>
__global__ void dotsKernel(const T* incoming, const T* y, int64_t hidden, int64_t rows_in, int topk,
                           const int32_t* slot_row, float* dots) {
  __shared__ double partial[kThreads];
  for (int64_t i = blockIdx.x; i < rows_in; i += gridDim.x) {
    for (int j = 0; j < topk; ++j) {
      const int32_t row = slot_row[i * topk + j];
      if (row < 0) {  // uniform across the block
        if (threadIdx.x == 0) dots[i * topk + j] = 0.0f;
        continue;
      }
      double sum = 0.0;
      const T* a = incoming + i * hidden;
      const T* b = y + static_cast<int64_t>(row) * hidden;
      for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x) {
        sum += static_cast<double>(toFloat(a[h])) * static_cast<double>(toFloat(b[h]));
      }
      partial[threadIdx.x] = sum;
      __syncthreads();
      for (int stride = kThreads / 2; stride > 0; stride /= 2) {
        if (static_cast<int>(threadIdx.x) < stride)
          partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
      }
      if (threadIdx.x == 0) dots[i * topk + j] = static_cast<float>(partial[0]);
      __syncthreads();
    }
  }
}

__global__ void gatherKernel(const float* back, int64_t tokens, int ranks, int topk,
                             const int32_t* send_pos, float* grad_weights) {
  const int64_t n = tokens * topk;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / topk;
    const int j = static_cast<int>(i % topk);
    float sum = 0.0f;
    for (int r = 0; r < ranks; ++r) {
      const int32_t pos = send_pos[static_cast<int64_t>(r) * tokens + t];
      if (pos >= 0) sum += back[static_cast<int64_t>(pos) * topk + j];
    }
    grad_weights[i] = sum;
  }
}

}  // namespace

cudaError_t scaleIntoLayout(const void* incoming, RowType type, int64_t hidden, int topk,
                            const int32_t* row_source, const float* row_weights,
                            const int32_t* total_rows, int64_t max_rows, void* grad_y,
                            cudaStream_t stream) {
  if (topk < 1 || hidden < 0) return cudaErrorInvalidValue;
  if (max_rows == 0 || hidden == 0) return cudaSuccess;
  if (type == RowType::kBF16) {
    scaleKernel<uint16_t><<<rowBlocks(max_rows), kThreads, 0, stream>>>(
        static_cast<const uint16_t*>(incoming), hidden, topk, row_source, row_weights, total_rows,
        max_rows, static_cast<uint16_t*>(grad_y));
  } else {
    scaleKernel<float><<<rowBlocks(max_rows), kThreads, 0, stream>>>(
        static_cast<const float*>(incoming), hidden, topk, row_source, row_weights, total_rows,
        max_rows, static_cast<float*>(grad_y));
  }
  return cudaGetLastError();
}

cudaError_t slotDots(const void* incoming, const void* y, RowType type, int64_t hidden,
                     int64_t rows_in, int topk, const int32_t* slot_row, float* dots,
                     cudaStream_t stream) {
  if (topk < 1 || hidden < 0) return cudaErrorInvalidValue;
  if (rows_in == 0) return cudaSuccess;
  if (type == RowType::kBF16) {
    dotsKernel<uint16_t><<<rowBlocks(rows_in), kThreads, 0, stream>>>(
        static_cast<const uint16_t*>(incoming), static_cast<const uint16_t*>(y), hidden, rows_in,
        topk, slot_row, dots);
  } else {
    dotsKernel<float><<<rowBlocks(rows_in), kThreads, 0, stream>>>(
        static_cast<const float*>(incoming), static_cast<const float*>(y), hidden, rows_in, topk,
        slot_row, dots);
  }
  return cudaGetLastError();
}

cudaError_t gatherSlotValues(const float* back, int64_t tokens, int ranks, int topk,
                             const int32_t* send_pos, float* grad_weights, cudaStream_t stream) {
  if (topk < 1 || ranks < 1) return cudaErrorInvalidValue;
  const int64_t n = tokens * topk;
  if (n == 0) return cudaSuccess;
  gatherKernel<<<blocksFor(n), kThreads, 0, stream>>>(back, tokens, ranks, topk, send_pos,
                                                      grad_weights);
  return cudaGetLastError();
}

}  // namespace moecomm::cuda
