// FP8 e4m3 with one f32 scale per 128-element block of a row, on the GPU, bit-identical to
// kernels/cpu/convert.hpp: scale = amax(finite |x| in the block) / 448 (1 for an all-zero block),
// q = e4m3(x / scale) with saturation; NaN stays NaN. The last block of a row may be short.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/combine.hpp"

namespace moecomm::cuda {

// x [rows, cols] f32 or bf16 -> q [rows, cols] and scales [rows, ceil(cols / 128)].
cudaError_t quantizeFp8(const void* x, RowType type, int64_t rows, int64_t cols, uint8_t* q,
                        float* scales, cudaStream_t stream);
// out [rows, cols] f32 or bf16 = e4m3 value * its block's scale.
cudaError_t dequantizeFp8(const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                          void* out, RowType type, cudaStream_t stream);

}  // namespace moecomm::cuda
