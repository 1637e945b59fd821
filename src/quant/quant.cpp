// The public number-format API over the CPU kernels.
#include "moecomm/quant.hpp"

#include "kernels/cpu/convert.hpp"
#include "src/core/numeric.hpp"
#include "src/core/tensor_checks.hpp"

namespace moecomm {

uint16_t floatToBf16(float value) noexcept {
  return numeric::floatToBf16(value);
}
float bf16ToFloat(uint16_t bits) noexcept {
  return numeric::bf16ToFloat(bits);
}
uint16_t floatToF16(float value) noexcept {
  return numeric::floatToF16(value);
}
float f16ToFloat(uint16_t bits) noexcept {
  return numeric::f16ToFloat(bits);
}
uint8_t floatToFp8E4M3(float value) noexcept {
  return numeric::floatToFp8E4M3(value);
}
float fp8E4M3ToFloat(uint8_t bits) noexcept {
  return numeric::fp8E4M3ToFloat(bits);
}

namespace {

Status checkSameShape(const TensorView& a, const TensorView& b, const char* a_name,
                      const char* b_name) {
  bool same = a.ndim == b.ndim;
  for (int i = 0; same && i < a.ndim; ++i) same = a.shape[i] == b.shape[i];
  if (!same) {
    return makeError(StatusCode::kInvalidArgument, "{} is {} but {} is {}; shapes must match",
                     a_name, a.describe(), b_name, b.describe());
  }
  return Status::ok();
}

Status checkFloatView(const char* name, const TensorView& v) {
  if (v.dtype != DType::kF32 && v.dtype != DType::kBF16 && v.dtype != DType::kF16) {
    return makeError(StatusCode::kInvalidArgument, "{} has dtype {}, expected f32, bf16 or f16",
                     name, dtypeName(v.dtype));
  }
  if (v.data == nullptr && v.numel() > 0) {
    return makeError(StatusCode::kInvalidArgument, "{} ({}) has null data", name, v.describe());
  }
  return Status::ok();
}

Status checkFp8Views(const TensorView& x, const TensorView& q, const TensorView& scales,
                     const char* x_name) {
  MOECOMM_RETURN_IF_ERROR(checkMatrix(x_name, x, -1, -1, {DType::kF32, DType::kBF16}));
  MOECOMM_RETURN_IF_ERROR(checkMatrix("q", q, x.shape[0], x.shape[1], {DType::kFP8E4M3}));
  const int64_t blocks = (x.shape[1] + kFp8BlockSize - 1) / kFp8BlockSize;
  return checkMatrix("scales", scales, x.shape[0], blocks, {DType::kF32});
}

}  // namespace

void convert(const TensorView& src, const TensorView& dst) {
  throwIfError(checkFloatView("src", src));
  throwIfError(checkFloatView("dst", dst));
  throwIfError(checkSameShape(src, dst, "src", "dst"));
  cpu::convertArray(src.data, src.dtype, dst.data, dst.dtype, src.numel());
}

void quantizeFp8(const TensorView& x, const TensorView& q, const TensorView& scales) {
  throwIfError(checkFp8Views(x, q, scales, "x"));
  cpu::quantizeFp8Rows(x.data, x.dtype, x.shape[0], x.shape[1], q.as<uint8_t>(),
                       scales.as<float>());
}

void dequantizeFp8(const TensorView& q, const TensorView& scales, const TensorView& out) {
  throwIfError(checkFp8Views(out, q, scales, "out"));
  cpu::dequantizeFp8Rows(q.as<const uint8_t>(), scales.as<const float>(), out.shape[0],
                         out.shape[1], out.data, out.dtype);
}

}  // namespace moecomm
