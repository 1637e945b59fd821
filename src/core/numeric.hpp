// Scalar number-format conversions, inline so kernels vectorize around them. Round to nearest,
// ties to even, everywhere.
#pragma once

#include <bit>
#include <cstdint>

// The same conversions run in CUDA kernels, so GPU and CPU results agree bit for bit.
#if defined(__CUDACC__)
#define MOECOMM_HD __host__ __device__
#else
#define MOECOMM_HD
#endif

namespace moecomm::numeric {

MOECOMM_HD inline float bitsToFloat(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  return std::bit_cast<float>(bits);
#endif
}
MOECOMM_HD inline uint32_t floatToBits(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  return std::bit_cast<uint32_t>(value);
#endif
}

// Rounds away `shift` low bits of `value` to nearest, ties to even.
MOECOMM_HD inline uint32_t roundShiftRne(uint32_t value, int shift) {
  uint32_t kept = value >> shift;
  uint32_t rest = value & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (kept & 1u))) ++kept;
  return kept;
}

MOECOMM_HD inline uint16_t floatToBf16(float value) {
  uint32_t bits = floatToBits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

MOECOMM_HD inline float bf16ToFloat(uint16_t bits) {
  return bitsToFloat(static_cast<uint32_t>(bits) << 16);
}

MOECOMM_HD inline uint16_t floatToF16(float value) {
  uint32_t bits = floatToBits(value);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {  // infinity or NaN
    return static_cast<uint16_t>(sign | (magnitude > 0x7f800000u ? 0x7e00u : 0x7c00u));
  }
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (magnitude <= 0x33000000u) return sign;  // <= 2^-25: ties to even give zero
  uint32_t exponent = magnitude >> 23;
  uint32_t mantissa = magnitude & 0x7fffffu;
  if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal half, unit 2^-24
    int shift = static_cast<int>(126u - exponent);
    return static_cast<uint16_t>(sign | roundShiftRne(mantissa | 0x800000u, shift));
  }
  uint32_t packed = ((exponent - 112u) << 23) | mantissa;  // rebias 127 -> 15, keep 23 bits
  return static_cast<uint16_t>(sign | roundShiftRne(packed, 13));
}

MOECOMM_HD inline float f16ToFloat(uint16_t half) {
  uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  uint32_t exponent = (half >> 10) & 0x1fu;
  uint32_t mantissa = half & 0x3ffu;
  if (exponent == 0x1fu) return bitsToFloat(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in f32
    float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return bitsToFloat(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

MOECOMM_HD inline uint8_t floatToFp8E4M3(float value) {
  uint32_t bits = floatToBits(value);
  uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return static_cast<uint8_t>(sign | 0x7fu);   // NaN
  if (magnitude >= 0x43e00000u) return static_cast<uint8_t>(sign | 0x7eu);  // >= 448: saturate
  if (magnitude <= 0x3a800000u) return sign;  // <= 2^-10: ties to even give zero
  uint32_t exponent = magnitude >> 23;
  uint32_t mantissa = magnitude & 0x7fffffu;
  if (magnitude < 0x3c800000u) {  // below 2^-6: subnormal, unit 2^-9
    int shift = static_cast<int>(141u - exponent);
    return static_cast<uint8_t>(sign | roundShiftRne(mantissa | 0x800000u, shift));
  }
  uint32_t packed = ((exponent - 120u) << 23) | mantissa;  // rebias 127 -> 7
  uint32_t rounded = roundShiftRne(packed, 20);
  if (rounded > 0x7eu) rounded = 0x7eu;  // 0x7f is NaN in e4m3fn
  return static_cast<uint8_t>(sign | rounded);
}

MOECOMM_HD inline float fp8E4M3ToFloat(uint8_t code) {
  uint32_t exponent = (code >> 3) & 0xfu;
  uint32_t mantissa = code & 0x7u;
  float magnitude;
  if (exponent == 0xfu && mantissa == 0x7u) {
    magnitude = bitsToFloat(0x7fc00000u);
  } else if (exponent == 0) {
    magnitude = static_cast<float>(mantissa) * 0.001953125f;  // 2^-9
  } else {
    magnitude = bitsToFloat(((exponent + 120u) << 23) | (mantissa << 20));
  }
  return (code & 0x80u) ? -magnitude : magnitude;
}

// Loads and stores of the payload types the engine accumulates in f32.
MOECOMM_HD inline float loadAsFloat(const void* base, int64_t i, bool is_bf16) {
  return is_bf16 ? bf16ToFloat(static_cast<const uint16_t*>(base)[i])
                 : static_cast<const float*>(base)[i];
}

}  // namespace moecomm::numeric
