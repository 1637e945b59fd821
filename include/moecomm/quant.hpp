// Number formats: bf16/f16 conversion with round-to-nearest-even and FP8 e4m3 quantization with
// one f32 scale per 128-element block of a row, the format MoE FP8 dispatch uses.
#pragma once

#include <cstdint>

#include "moecomm/export.hpp"
#include "moecomm/types.hpp"

namespace moecomm {

inline constexpr int kFp8BlockSize = 128;
inline constexpr float kFp8E4M3Max = 448.0f;

// Scales per row of `hidden` values: ceil(hidden / 128).
inline constexpr int64_t fp8ScaleBlocks(int64_t hidden) {
  return (hidden + kFp8BlockSize - 1) / kFp8BlockSize;
}

MOECOMM_API uint16_t floatToBf16(float value) noexcept;
MOECOMM_API float bf16ToFloat(uint16_t bits) noexcept;
MOECOMM_API uint16_t floatToF16(float value) noexcept;
MOECOMM_API float f16ToFloat(uint16_t bits) noexcept;
// Saturating: |value| >= 448 (infinity included) becomes +-448; NaN stays NaN (0x7f / 0xff).
MOECOMM_API uint8_t floatToFp8E4M3(float value) noexcept;
MOECOMM_API float fp8E4M3ToFloat(uint8_t bits) noexcept;

// Elementwise conversion between f32, bf16 and f16 views of the same shape.
MOECOMM_API void convert(const TensorView& src, const TensorView& dst);

// x: [rows, H] f32 or bf16. q: [rows, H] fp8e4m3. scales: [rows, ceil(H/128)] f32.
// scale = amax(|block|) / 448 over the finite values of the block (1 for an all-zero block), and
// q = e4m3(x / scale). The last block of a row may be shorter than 128.
MOECOMM_API void quantizeFp8(const TensorView& x, const TensorView& q, const TensorView& scales);
// out: [rows, H] f32 or bf16; out = e4m3 value * scale of its block.
MOECOMM_API void dequantizeFp8(const TensorView& q, const TensorView& scales,
                               const TensorView& out);

}  // namespace moecomm
