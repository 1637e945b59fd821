#include "kernels/cpu/convert.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "moecomm/quant.hpp"
#include "src/core/numeric.hpp"

namespace moecomm::cpu {

namespace {

float loadElement(const void* src, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kBF16:
      return numeric::bf16ToFloat(static_cast<const uint16_t*>(src)[i]);
    case DType::kF16:
      return numeric::f16ToFloat(static_cast<const uint16_t*>(src)[i]);
    default:
      return static_cast<const float*>(src)[i];
  }
}

void storeElement(void* dst, DType dtype, int64_t i, float value) {
  switch (dtype) {
    case DType::kBF16:
      static_cast<uint16_t*>(dst)[i] = numeric::floatToBf16(value);
      break;
    case DType::kF16:
      static_cast<uint16_t*>(dst)[i] = numeric::floatToF16(value);
      break;
    default:
      static_cast<float*>(dst)[i] = value;
      break;
  }
}

}  // namespace

void convertArray(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n) {
  if (src_dtype == dst_dtype) {
    const size_t element = src_dtype == DType::kF32 ? 4 : 2;  // f32, or bf16 / f16
    std::memcpy(dst, src, static_cast<size_t>(n) * element);
    return;
  }
  for (int64_t i = 0; i < n; ++i) storeElement(dst, dst_dtype, i, loadElement(src, src_dtype, i));
}

void quantizeFp8Rows(const void* x, DType x_dtype, int64_t rows, int64_t cols, uint8_t* q,
                     float* scales) {
  const int64_t blocks = (cols + kFp8BlockSize - 1) / kFp8BlockSize;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = r * cols + b * kFp8BlockSize;
      const int64_t end = r * cols + std::min<int64_t>(cols, (b + 1) * kFp8BlockSize);
      float amax = 0.0f;
      for (int64_t i = begin; i < end; ++i) {
        float v = std::fabs(loadElement(x, x_dtype, i));
        if (std::isfinite(v)) amax = std::max(amax, v);
      }
      const float scale = amax > 0.0f ? amax / kFp8E4M3Max : 1.0f;
      scales[r * blocks + b] = scale;
      for (int64_t i = begin; i < end; ++i) {
        q[i] = numeric::floatToFp8E4M3(loadElement(x, x_dtype, i) / scale);
      }
    }
  }
}

void dequantizeFp8Rows(const uint8_t* q, const float* scales, int64_t rows, int64_t cols, void* out,
                       DType out_dtype) {
  const int64_t blocks = (cols + kFp8BlockSize - 1) / kFp8BlockSize;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      storeElement(out, out_dtype, i,
                   numeric::fp8E4M3ToFloat(q[i]) * scales[r * blocks + c / kFp8BlockSize]);
    }
  }
}

}  // namespace moecomm::cpu
