#include "kernels/cuda/fp8.hpp"
#include "kernels/cuda/rows.cuh"

namespace moecomm::cuda {

namespace {

constexpr int kBlock = 128;  // elements per scale
constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr unsigned kFull = 0xffffffffu;

// One warp per 128-element block: each lane holds 4 elements.
template <typename T>
__global__ void quantizeKernel(const T* x, int64_t rows, int64_t cols, uint8_t* q, float* scales) {
  const int64_t per_row = (cols + kBlock - 1) / kBlock;
  const int64_t blocks = rows * per_row;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  for (int64_t b = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
       b < blocks; b += static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp) {
    const int64_t row = b / per_row;
    const int64_t begin = (b % per_row) * kBlock;
    const int64_t end = begin + kBlock < cols ? begin + kBlock : cols;
    float v[kBlock / kWarp];
    float amax = 0.0f;
    for (int i = 0; i < kBlock / kWarp; ++i) {
      const int64_t c = begin + lane + i * kWarp;
      v[i] = c < end ? toFloat(x[row * cols + c]) : 0.0f;
      const float a = fabsf(v[i]);
      if (isfinite(a)) amax = fmaxf(amax, a);
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      amax = fmaxf(amax, __shfl_xor_sync(kFull, amax, offset));
    }
    const float scale = amax > 0.0f ? __fdiv_rn(amax, 448.0f) : 1.0f;
    if (lane == 0) scales[b] = scale;
    for (int i = 0; i < kBlock / kWarp; ++i) {
      const int64_t c = begin + lane + i * kWarp;
      if (c < end) q[row * cols + c] = numeric::floatToFp8E4M3(__fdiv_rn(v[i], scale));
    }
  }
}

template <typename T>
__global__ void dequantizeKernel(const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                                 T* out) {
  const int64_t per_row = (cols + kBlock - 1) / kBlock;
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / cols;
    const int64_t c = i % cols;
    fromFloat(__fmul_rn(numeric::fp8E4M3ToFloat(q[i]), scales[row * per_row + c / kBlock]),
              &out[i]);
  }
}

int gridFor(int64_t threads_needed, int block) {
  const int64_t blocks = (threads_needed + block - 1) / block;
  return static_cast<int>(blocks < (1 << 20) ? (blocks > 0 ? blocks : 1) : (1 << 20));
}

}  // namespace

cudaError_t quantizeFp8(const void* x, RowType type, int64_t rows, int64_t cols, uint8_t* q,
                        float* scales, cudaStream_t stream) {
  if (rows < 0 || cols < 0) return cudaErrorInvalidValue;
  const int64_t blocks = rows * ((cols + kBlock - 1) / kBlock);
  if (blocks == 0) return cudaSuccess;
  const int threads = kWarp * kWarpsPerBlock;
  const int grid = gridFor(blocks * kWarp, threads);
  if (type == RowType::kBF16) {
    quantizeKernel<uint16_t>
        <<<grid, threads, 0, stream>>>(static_cast<const uint16_t*>(x), rows, cols, q, scales);
  } else {
    quantizeKernel<float>
        <<<grid, threads, 0, stream>>>(static_cast<const float*>(x), rows, cols, q, scales);
  }
  return cudaGetLastError();
}

cudaError_t dequantizeFp8(const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                          void* out, RowType type, cudaStream_t stream) {
  if (rows < 0 || cols < 0) return cudaErrorInvalidValue;
  const int64_t n = rows * cols;
  if (n == 0) return cudaSuccess;
  const int grid = gridFor(n, 256);
  if (type == RowType::kBF16) {
    dequantizeKernel<uint16_t>
        <<<grid, 256, 0, stream>>>(q, scales, rows, cols, static_cast<uint16_t*>(out));
  } else {
    dequantizeKernel<float>
        <<<grid, 256, 0, stream>>>(q, scales, rows, cols, static_cast<float*>(out));
  }
  return cudaGetLastError();
}

}  // namespace moecomm::cuda
