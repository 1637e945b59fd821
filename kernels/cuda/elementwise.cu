#include "kernels/cuda/elementwise.hpp"
#include "kernels/cuda/rows.cuh"

namespace moecomm::cuda {

namespace {

// The accurate expf and erff (not the __expf intrinsics), so that results stay within a few ulps
// of the CPU's std::exp and std::erf.
__device__ inline float sigmoidOf(float x) {
  return 1.0f / (1.0f + expf(-x));
}

__device__ inline int64_t firstIndex() {
  return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
}
__device__ inline int64_t stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

__global__ void swigluForwardKernel(const float* pre, float* h, int64_t rows, int64_t ffn) {
  for (int64_t i = firstIndex(); i < rows * ffn; i += stride()) {
    const int64_t r = i / ffn, c = i % ffn;
    const float gate = pre[r * 2 * ffn + c];
    const float up = pre[r * 2 * ffn + ffn + c];
    h[i] = gate * sigmoidOf(gate) * up;
  }
}

__global__ void swigluBackwardKernel(const float* pre, const float* dh, float* dpre, int64_t rows,
                                     int64_t ffn) {
  for (int64_t i = firstIndex(); i < rows * ffn; i += stride()) {
    const int64_t r = i / ffn, c = i % ffn;
    const float gate = pre[r * 2 * ffn + c];
    const float up = pre[r * 2 * ffn + ffn + c];
    const float s = sigmoidOf(gate);
    dpre[r * 2 * ffn + ffn + c] = dh[i] * (gate * s);
    dpre[r * 2 * ffn + c] = dh[i] * up * s * (1.0f + gate * (1.0f - s));
  }
}

__global__ void geluForwardKernel(const float* pre, float* h, int64_t n) {
  for (int64_t i = firstIndex(); i < n; i += stride()) {
    h[i] = 0.5f * pre[i] * (1.0f + erff(pre[i] * 0.70710678118654752f));
  }
}

__global__ void geluBackwardKernel(const float* pre, const float* dh, float* dpre, int64_t n) {
  const float inv_sqrt_2pi = 0.3989422804014327f;
  for (int64_t i = firstIndex(); i < n; i += stride()) {
    const float x = pre[i];
    const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    dpre[i] = dh[i] * (cdf + x * inv_sqrt_2pi * expf(-0.5f * x * x));
  }
}

template <typename T>
__global__ void toF32Kernel(const T* src, float* dst, int64_t n) {
  for (int64_t i = firstIndex(); i < n; i += stride()) dst[i] = toFloat(src[i]);
}

template <typename T>
__global__ void fromF32Kernel(const float* src, T* dst, int64_t n) {
  for (int64_t i = firstIndex(); i < n; i += stride()) fromFloat(src[i], &dst[i]);
}

__global__ void addIntoKernel(float* y, const float* x, int64_t n) {
  for (int64_t i = firstIndex(); i < n; i += stride()) y[i] += x[i];
}

}  // namespace

cudaError_t swigluForward(const float* pre, float* h, int64_t rows, int64_t ffn,
                          cudaStream_t stream) {
  if (rows * ffn == 0) return cudaSuccess;
  swigluForwardKernel<<<blocksFor(rows * ffn), kThreads, 0, stream>>>(pre, h, rows, ffn);
  return cudaGetLastError();
}

cudaError_t swigluBackward(const float* pre, const float* dh, float* dpre, int64_t rows,
                           int64_t ffn, cudaStream_t stream) {
  if (rows * ffn == 0) return cudaSuccess;
  swigluBackwardKernel<<<blocksFor(rows * ffn), kThreads, 0, stream>>>(pre, dh, dpre, rows, ffn);
  return cudaGetLastError();
}

cudaError_t geluForward(const float* pre, float* h, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  geluForwardKernel<<<blocksFor(n), kThreads, 0, stream>>>(pre, h, n);
  return cudaGetLastError();
}

cudaError_t geluBackward(const float* pre, const float* dh, float* dpre, int64_t n,
                         cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  geluBackwardKernel<<<blocksFor(n), kThreads, 0, stream>>>(pre, dh, dpre, n);
  return cudaGetLastError();
}

cudaError_t toF32(const void* src, RowType type, float* dst, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (type == RowType::kBF16) {
    toF32Kernel<<<blocksFor(n), kThreads, 0, stream>>>(static_cast<const uint16_t*>(src), dst, n);
  } else {
    toF32Kernel<<<blocksFor(n), kThreads, 0, stream>>>(static_cast<const float*>(src), dst, n);
  }
  return cudaGetLastError();
}

cudaError_t fromF32(const float* src, void* dst, RowType type, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (type == RowType::kBF16) {
    fromF32Kernel<<<blocksFor(n), kThreads, 0, stream>>>(src, static_cast<uint16_t*>(dst), n);
  } else {
    fromF32Kernel<<<blocksFor(n), kThreads, 0, stream>>>(src, static_cast<float*>(dst), n);
  }
  return cudaGetLastError();
}

cudaError_t addInto(float* y, const float* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  addIntoKernel<<<blocksFor(n), kThreads, 0, stream>>>(y, x, n);
  return cudaGetLastError();
}

}  // namespace moecomm::cuda
