// Elementwise number-format kernels on host memory.
#pragma once

#include <cstdint>

#include "moecomm/types.hpp"

namespace moecomm::cpu {

// dst[i] = src[i] for n elements; src and dst are each f32, bf16 or f16.
void convertArray(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n);

// Per-128-block FP8 e4m3 quantization of `rows` rows of `cols` elements (x is f32 or bf16).
void quantizeFp8Rows(const void* x, DType x_dtype, int64_t rows, int64_t cols, uint8_t* q,
                     float* scales);
void dequantizeFp8Rows(const uint8_t* q, const float* scales, int64_t rows, int64_t cols, void* out,
                       DType out_dtype);

}  // namespace moecomm::cpu
