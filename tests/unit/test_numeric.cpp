// Number formats against independent references: the compiler's _Float16 for f16, a nearest-
// neighbour search for bf16 and fp8, and exhaustive round trips over every code.
#include <gtest/gtest.h>
#include <moecomm/moecomm.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace {

using namespace moecomm;

float bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// Nearest of two neighbours by exact distance (in double), ties to the even code.
template <typename Code>
Code nearestOf(double value, Code lo, double lo_value, Code hi, double hi_value) {
  double dlo = std::fabs(value - lo_value), dhi = std::fabs(hi_value - value);
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1) == 0 ? lo : hi;
}

uint16_t referenceBf16(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  uint16_t truncated = static_cast<uint16_t>(b >> 16);  // toward zero
  if ((b & 0xffffu) == 0) return truncated;
  uint16_t away = static_cast<uint16_t>(truncated + 1);  // next magnitude up (same sign)
  return nearestOf<uint16_t>(std::fabs(static_cast<double>(f)), truncated & 0x7fff,
                             std::fabs(static_cast<double>(bits(uint32_t(truncated) << 16))),
                             away & 0x7fff,
                             std::fabs(static_cast<double>(bits(uint32_t(away) << 16)))) |
         (truncated & 0x8000);
}

TEST(Bf16, EveryCodeRoundTrips) {
  for (uint32_t code = 0; code < 65536; ++code) {
    float f = bf16ToFloat(static_cast<uint16_t>(code));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16ToFloat(floatToBf16(f))));
    } else {
      EXPECT_EQ(floatToBf16(f), code) << "code " << code;
    }
  }
}

TEST(Bf16, RoundsToNearestEvenOnRandomAndHalfwayValues) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> any(0, 0xffffffffu);
  for (int i = 0; i < 200000; ++i) {
    uint32_t b = any(rng);
    if (i % 4 == 0) b = (b & 0xffff0000u) | 0x8000u;  // exactly halfway
    float f = bits(b);
    if (!std::isfinite(f) || std::fabs(f) > 3.3e38f) continue;
    ASSERT_EQ(floatToBf16(f), referenceBf16(f)) << "bits 0x" << std::hex << b;
  }
  EXPECT_EQ(floatToBf16(bits(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(floatToBf16(bits(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(floatToBf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_TRUE(std::isnan(bf16ToFloat(floatToBf16(std::nanf("")))));
}

TEST(F16, EveryCodeRoundTrips) {
  for (uint32_t code = 0; code < 65536; ++code) {
    float f = f16ToFloat(static_cast<uint16_t>(code));
    _Float16 h;
    uint16_t c16 = static_cast<uint16_t>(code);
    std::memcpy(&h, &c16, 2);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(static_cast<float>(h)));
      EXPECT_TRUE(std::isnan(f16ToFloat(floatToF16(f))));
    } else {
      EXPECT_EQ(f, static_cast<float>(h)) << "code " << code;
      EXPECT_EQ(floatToF16(f), code) << "code " << code;
    }
  }
}

TEST(F16, MatchesCompilerConversionOnRandomAndHalfwayValues) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> any(0, 0xffffffffu);
  std::uniform_int_distribution<uint32_t> code(0, 0x7bfe);
  for (int i = 0; i < 300000; ++i) {
    float f;
    if (i % 3 == 0) {
      // Exactly halfway between two adjacent halves (exact in f32).
      uint16_t c = static_cast<uint16_t>(code(rng));
      f = 0.5f * (f16ToFloat(c) + f16ToFloat(static_cast<uint16_t>(c + 1)));
      if (i % 2) f = -f;
    } else {
      f = bits(any(rng));
      if (std::isnan(f)) continue;
    }
    _Float16 h = static_cast<_Float16>(f);
    uint16_t expected;
    std::memcpy(&expected, &h, 2);
    ASSERT_EQ(floatToF16(f), expected) << "value " << f;
  }
}

// All finite e4m3 codes and their values, for a brute-force nearest search.
std::vector<std::pair<uint8_t, double>> fp8Codes() {
  std::vector<std::pair<uint8_t, double>> codes;
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;
    codes.emplace_back(static_cast<uint8_t>(c), fp8E4M3ToFloat(static_cast<uint8_t>(c)));
  }
  return codes;
}

uint8_t referenceFp8(float f, const std::vector<std::pair<uint8_t, double>>& codes) {
  if (std::isnan(f)) return std::signbit(f) ? 0xff : 0x7f;
  double v = std::fmax(-448.0, std::fmin(448.0, static_cast<double>(f)));
  uint8_t best = 0;
  double best_d = 1e300;
  for (auto [c, value] : codes) {
    if (std::signbit(value) != std::signbit(f)) continue;
    double d = std::fabs(value - v);
    if (d < best_d || (d == best_d && (c & 1) == 0)) {
      best = c;
      best_d = d;
    }
  }
  return best;
}

TEST(Fp8E4M3, EveryCodeRoundTripsAndKnownValues) {
  for (int c = 0; c < 256; ++c) {
    float f = fp8E4M3ToFloat(static_cast<uint8_t>(c));
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(f));
    } else {
      EXPECT_EQ(floatToFp8E4M3(f), c) << "code " << c;
    }
  }
  EXPECT_EQ(fp8E4M3ToFloat(0x7e), 448.0f);
  EXPECT_EQ(fp8E4M3ToFloat(0x01), 0.001953125f);  // 2^-9, smallest subnormal
  EXPECT_EQ(fp8E4M3ToFloat(0x08), 0.015625f);     // 2^-6, smallest normal
  EXPECT_EQ(floatToFp8E4M3(1e6f), 0x7e);          // saturates
  EXPECT_EQ(floatToFp8E4M3(-std::numeric_limits<float>::infinity()), 0xfe);
  EXPECT_EQ(floatToFp8E4M3(std::nanf("")) & 0x7f, 0x7f);
}

TEST(Fp8E4M3, RoundsToNearestEvenAgainstBruteForce) {
  auto codes = fp8Codes();
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> wide(-520.0f, 520.0f);
  std::uniform_real_distribution<float> tiny(-0.03f, 0.03f);
  for (int i = 0; i < 100000; ++i) {
    float f = (i % 2) ? wide(rng) : tiny(rng);
    ASSERT_EQ(floatToFp8E4M3(f), referenceFp8(f, codes)) << "value " << f;
  }
  // Every midpoint between adjacent positive codes is a tie.
  for (int c = 0; c < 0x7e; ++c) {
    float mid = 0.5f * (fp8E4M3ToFloat(static_cast<uint8_t>(c)) +
                        fp8E4M3ToFloat(static_cast<uint8_t>(c + 1)));
    EXPECT_EQ(floatToFp8E4M3(mid), (c & 1) ? c + 1 : c) << "between " << c << " and " << c + 1;
  }
}

TEST(Fp8Blockwise, ScalesAreBlockAmaxOver448AndErrorIsBounded) {
  const int64_t rows = 5, cols = 300;  // three blocks per row, the last of 44 elements
  const int64_t blocks = 3;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> x(rows * cols);
  for (float& v : x) v = normal(rng);
  for (int64_t c = 128; c < 256; ++c) x[2 * cols + c] = 0.0f;  // an all-zero block
  std::vector<uint8_t> q(rows * cols);
  std::vector<float> scales(rows * blocks), back(rows * cols);
  quantizeFp8(TensorView::matrix(x.data(), DType::kF32, rows, cols),
              TensorView::matrix(q.data(), DType::kFP8E4M3, rows, cols),
              TensorView::matrix(scales.data(), DType::kF32, rows, blocks));
  dequantizeFp8(TensorView::matrix(q.data(), DType::kFP8E4M3, rows, cols),
                TensorView::matrix(scales.data(), DType::kF32, rows, blocks),
                TensorView::matrix(back.data(), DType::kF32, rows, cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      float amax = 0.0f;
      for (int64_t c = b * 128; c < std::min<int64_t>(cols, (b + 1) * 128); ++c) {
        amax = std::max(amax, std::fabs(x[r * cols + c]));
      }
      const float scale = scales[r * blocks + b];
      EXPECT_EQ(scale, amax > 0 ? amax / 448.0f : 1.0f);
      for (int64_t c = b * 128; c < std::min<int64_t>(cols, (b + 1) * 128); ++c) {
        float v = x[r * cols + c];
        // Half an e4m3 ulp: 2^-4 relative for normals, 2^-10 * scale absolute for subnormals.
        EXPECT_LE(std::fabs(back[r * cols + c] - v),
                  std::fabs(v) * 0.0625f + scale * 0.0009765625f + 1e-7f);
      }
    }
  }
}

TEST(Fp8Blockwise, QuantizeOfDequantizedIsExact) {
  const int64_t rows = 4, cols = 256 + 17;
  const int64_t blocks = 3;
  std::mt19937 rng(9);
  std::uniform_int_distribution<int> code(0, 0xfd);
  std::vector<uint8_t> q(rows * cols);
  for (auto& c : q) {
    c = static_cast<uint8_t>(code(rng));
    if ((c & 0x7f) == 0x7f) c = 0x10;
  }
  std::vector<float> scales(rows * blocks);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      q[r * cols + b * 128] = (r + b) % 2 ? 0x7e : 0xfe;  // each block reaches +-448
      scales[r * blocks + b] = std::ldexp(1.0f, static_cast<int>(r + b) - 3);
    }
  }
  std::vector<float> x(rows * cols);
  dequantizeFp8(TensorView::matrix(q.data(), DType::kFP8E4M3, rows, cols),
                TensorView::matrix(scales.data(), DType::kF32, rows, blocks),
                TensorView::matrix(x.data(), DType::kF32, rows, cols));
  std::vector<uint8_t> q2(rows * cols);
  std::vector<float> scales2(rows * blocks);
  quantizeFp8(TensorView::matrix(x.data(), DType::kF32, rows, cols),
              TensorView::matrix(q2.data(), DType::kFP8E4M3, rows, cols),
              TensorView::matrix(scales2.data(), DType::kF32, rows, blocks));
  EXPECT_EQ(q, q2);
  EXPECT_EQ(scales, scales2);
}

TEST(Convert, Bf16AndF16ArraysAndBadShapes) {
  std::vector<float> src = {1.0f, -2.5f, 3.14159f, 65504.0f, 1e-8f, 0.0f};
  std::vector<uint16_t> half(6), brain(6);
  std::vector<float> back(6);
  convert(TensorView::vector(src.data(), DType::kF32, 6),
          TensorView::vector(half.data(), DType::kF16, 6));
  convert(TensorView::vector(src.data(), DType::kF32, 6),
          TensorView::vector(brain.data(), DType::kBF16, 6));
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(half[i], floatToF16(src[i]));
    EXPECT_EQ(brain[i], floatToBf16(src[i]));
  }
  convert(TensorView::vector(brain.data(), DType::kBF16, 6),
          TensorView::vector(back.data(), DType::kF32, 6));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(back[i], bf16ToFloat(brain[i]));
  try {
    convert(TensorView::vector(src.data(), DType::kF32, 6),
            TensorView::vector(half.data(), DType::kF16, 5));
    FAIL() << "shape mismatch accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("shapes must match"), std::string::npos);
  }
  EXPECT_THROW(convert(TensorView::vector(src.data(), DType::kI32, 6),
                       TensorView::vector(half.data(), DType::kF16, 6)),
               Error);
}

}  // namespace
