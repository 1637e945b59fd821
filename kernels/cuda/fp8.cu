#include "kernels/cuda/fp8.hpp"
#include "kernels/cuda/rows.cuh"

namespace moecomm::cuda {

namespace {

constexpr int kBlock = 128;  // elements per scale
constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr unsigned kFull = 0xffffffffu;

// The vector path: each lane owns 16 consecutive elements (one 16-byte store of e4m3 codes and
// one or more 16-byte loads), so 8 lanes cover a 128-element block and a warp covers four. It
// needs a row length that is a multiple of 16 (a row's short last block is then whole chunks)
// and 16-byte aligned rows.
constexpr int kChunk = 16;
constexpr int kLanesPerBlock = kBlock / kChunk;
constexpr int kBlocksPerWarp = kWarp / kLanesPerBlock;

bool vectorPathFits(int64_t cols, const void* a, const void* b) {
  return cols % kChunk == 0 && copyUnit(16, a, b) == 16;
}

// 16 elements from 16-byte aligned memory, as f32.
template <typename T>
__device__ inline void loadChunk(const T* src, float (&v)[kChunk]) {
  const auto* vectors = reinterpret_cast<const Vec<T>*>(src);
  for (int j = 0; j < kChunk / kLanes<T>; ++j) {
    const Vec<T> u = vectors[j];
    for (int e = 0; e < kLanes<T>; ++e) v[j * kLanes<T> + e] = toFloat(u.v[e]);
  }
}

// The block's scale, bit-identical to the CPU: amax of the finite |x|, over 448.
__device__ inline float scaleOf(float amax) {
  return amax > 0.0f ? __fdiv_rn(amax, 448.0f) : 1.0f;
}

// The scalar path, for any row length: one warp per 128-element block, 4 elements per lane.
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
    const float scale = scaleOf(amax);
    if (lane == 0) scales[b] = scale;
    for (int i = 0; i < kBlock / kWarp; ++i) {
      const int64_t c = begin + lane + i * kWarp;
      if (c < end) q[row * cols + c] = numeric::floatToFp8E4M3(__fdiv_rn(v[i], scale));
    }
  }
}

// The vector path. The warp strides as one (every lane reaches every shuffle); a lane past the
// last block, or past its row's end, takes part with amax 0 and writes nothing.
template <typename T>
__global__ void quantizeChunksKernel(const T* x, int64_t rows, int64_t cols, uint8_t* q,
                                     float* scales) {
  const int64_t per_row = (cols + kBlock - 1) / kBlock;
  const int64_t blocks = rows * per_row;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int part = lane % kLanesPerBlock;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;
  for (int64_t w = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
       w * kBlocksPerWarp < blocks; w += warps) {
    const int64_t b = w * kBlocksPerWarp + lane / kLanesPerBlock;
    float v[kChunk];
    float amax = 0.0f;
    int64_t at = -1;  // this lane's first element, or -1
    if (b < blocks) {
      const int64_t c = (b % per_row) * kBlock + part * kChunk;
      if (c < cols) at = (b / per_row) * cols + c;
    }
    if (at >= 0) {
      loadChunk(x + at, v);
      for (int i = 0; i < kChunk; ++i) {
        const float a = fabsf(v[i]);
        if (isfinite(a)) amax = fmaxf(amax, a);
      }
    }
    for (int offset = kLanesPerBlock / 2; offset > 0; offset /= 2) {
      amax = fmaxf(amax, __shfl_xor_sync(kFull, amax, offset));
    }
    const float scale = scaleOf(amax);
    if (b < blocks && part == 0) scales[b] = scale;
    if (at >= 0) {
      uint32_t words[kChunk / 4] = {};
      for (int i = 0; i < kChunk; ++i) {
        const uint32_t code = numeric::floatToFp8E4M3(__fdiv_rn(v[i], scale));
        words[i / 4] |= code << (8 * (i % 4));
      }
      *reinterpret_cast<uint4*>(q + at) = make_uint4(words[0], words[1], words[2], words[3]);
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

// The vector path: a thread per 16 codes (one 16-byte load), which share one scale.
template <typename T>
__global__ void dequantizeChunksKernel(const uint8_t* q, const float* scales, int64_t rows,
                                       int64_t cols, T* out) {
  const int64_t per_row = (cols + kBlock - 1) / kBlock;
  const int64_t chunks = rows * cols / kChunk;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < chunks;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t at = i * kChunk;
    const float scale = scales[(at / cols) * per_row + (at % cols) / kBlock];
    const uint4 packed = *reinterpret_cast<const uint4*>(q + at);
    const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
    auto* vectors = reinterpret_cast<Vec<T>*>(out + at);
    for (int j = 0; j < kChunk / kLanes<T>; ++j) {
      Vec<T> u;
      for (int e = 0; e < kLanes<T>; ++e) {
        const int k = j * kLanes<T> + e;
        const auto code = static_cast<uint8_t>(words[k / 4] >> (8 * (k % 4)));
        fromFloat(__fmul_rn(numeric::fp8E4M3ToFloat(code), scale), &u.v[e]);
      }
      vectors[j] = u;
    }
  }
}

int gridFor(int64_t threads_needed, int block) {
  return cappedGrid((threads_needed + block - 1) / block);
}

template <typename T>
void launchQuantize(const T* x, int64_t rows, int64_t cols, uint8_t* q, float* scales,
                    cudaStream_t stream) {
  const int64_t blocks = rows * ((cols + kBlock - 1) / kBlock);
  const int threads = kWarp * kWarpsPerBlock;
  if (vectorPathFits(cols, x, q)) {
    const int64_t warps = (blocks + kBlocksPerWarp - 1) / kBlocksPerWarp;
    quantizeChunksKernel<T>
        <<<gridFor(warps * kWarp, threads), threads, 0, stream>>>(x, rows, cols, q, scales);
  } else {
    quantizeKernel<T>
        <<<gridFor(blocks * kWarp, threads), threads, 0, stream>>>(x, rows, cols, q, scales);
  }
}

template <typename T>
void launchDequantize(const uint8_t* q, const float* scales, int64_t rows, int64_t cols, T* out,
                      cudaStream_t stream) {
  if (vectorPathFits(cols, q, out)) {
    dequantizeChunksKernel<T>
        <<<gridFor(rows * cols / kChunk, 256), 256, 0, stream>>>(q, scales, rows, cols, out);
  } else {
    dequantizeKernel<T><<<gridFor(rows * cols, 256), 256, 0, stream>>>(q, scales, rows, cols, out);
  }
}

}  // namespace

cudaError_t quantizeFp8(const void* x, RowType type, int64_t rows, int64_t cols, uint8_t* q,
                        float* scales, cudaStream_t stream) {
  if (rows < 0 || cols < 0) return cudaErrorInvalidValue;
  if (rows * cols == 0) return cudaSuccess;
  if (type == RowType::kBF16) {
    launchQuantize(static_cast<const uint16_t*>(x), rows, cols, q, scales, stream);
  } else {
    launchQuantize(static_cast<const float*>(x), rows, cols, q, scales, stream);
  }
  return cudaGetLastError();
}

cudaError_t dequantizeFp8(const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                          void* out, RowType type, cudaStream_t stream) {
  if (rows < 0 || cols < 0) return cudaErrorInvalidValue;
  if (rows * cols == 0) return cudaSuccess;
  if (type == RowType::kBF16) {
    launchDequantize(q, scales, rows, cols, static_cast<uint16_t*>(out), stream);
  } else {
    launchDequantize(q, scales, rows, cols, static_cast<float*>(out), stream);
  }
  return cudaGetLastError();
}

}  // namespace moecomm::cuda
