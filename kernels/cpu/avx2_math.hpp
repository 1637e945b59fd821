// AVX2+FMA building blocks for exp and sigmoid, eight floats at a time: a Cody-Waite range
// reduction and Cephes' degree-6 polynomial, about 1 ulp, and a cheaper sigmoid estimate for
// ranking. Inline, for kernels that fuse them into larger loops; callers check the CPU first, and
// no file that inlines them may be built with -ffast-math (it would rewrite them, and one formula
// would give two answers). x86-64 only.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <limits>

namespace moecomm::cpu {

// exp(x) for x clamped to [-87.34, 88.38], where 2^n stays a normal float: below, the result is
// about 1e-38 instead of 0, which no weight can tell apart.
__attribute__((target("avx2,fma"), always_inline)) inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3365f)), _mm256_set1_ps(88.3762f));
  // n = round(x / ln2) by the magic-number addition: 1.5 * 2^23 + 127 pushes the fraction out,
  // leaving n + 127 in the low mantissa bits, which shifted into place are 2^n's exponent.
  const __m256 magic = _mm256_set1_ps(12583039.0f);
  const __m256 shifted = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
  const __m256 n = _mm256_sub_ps(shifted, magic);
  // r = x - n ln2, with ln2 in two parts so that n * the first part is exact.
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i exponent = _mm256_slli_epi32(_mm256_castps_si256(shifted), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(exponent));
}

// 1 / (1 + exp(-x)); exp's clamp keeps the sum finite, so large negative x gives about 1e-38. A
// true division: correctly rounded, and 8% faster than the estimate and its Newton step on this
// project's Zen 3 machine (the divider is not one of the FMA pipes the polynomial keeps busy).
__attribute__((target("avx2,fma"), always_inline)) inline __m256 sigmoid8(__m256 x) {
  const __m256 e = exp8(_mm256_xor_ps(x, _mm256_set1_ps(-0.0f)));
  return _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

// The most sigmoidEstimate8(x) differs from sigmoid8(x), for any float x: 7.2e-7 measured over
// every float in [-100, 100] (beyond, both saturate alike), rounded up.
inline constexpr float kSigmoidEstimateError = 1e-6f;

// Where sigmoidEstimateInRange8 holds: beyond, the exponent overflows and its result is
// meaningless. (A caller that checks its row's range afterwards skips the clamp.)
inline constexpr float kSigmoidEstimateRange = 86.0f;

// A cheaper sigmoid, for ranking: 2^f by a degree-4 minimax polynomial on [-1/2, 1/2] (relative
// error 2.6e-6, which the sigmoid's slope of at most 1/4 shrinks), its exponent added as an
// integer. Half the FMA-pipe work of sigmoid8; a caller that ranks by it must settle whatever lies
// within kSigmoidEstimateError of a decision with sigmoid8 itself. |x| <= kSigmoidEstimateRange.
__attribute__((target("avx2,fma"), always_inline)) inline __m256 sigmoidEstimateInRange8(__m256 x) {
  // |x| <= 86 keeps n in [-125, 125], so adding n to the exponent of p (0.7 to 1.42) stays normal.
  // exp(-x) = 2^(n + f): n = round(-x log2 e) by the magic-number addition (1.5 * 2^23 leaves n
  // in the low mantissa bits, which shifted by 23 are n added to an exponent), f the rest.
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  const __m256 neg_log2e = _mm256_set1_ps(-1.44269504088896341f);
  const __m256 shifted = _mm256_fmadd_ps(x, neg_log2e, magic);
  const __m256 f = _mm256_fmsub_ps(x, neg_log2e, _mm256_sub_ps(shifted, magic));
  __m256 p = _mm256_set1_ps(9.570102207e-3f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.591785908e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402474433e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931217909e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.999992847e-1f));
  const __m256i e =
      _mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_castps_si256(shifted), 23));
  return _mm256_div_ps(_mm256_set1_ps(1.0f),
                       _mm256_add_ps(_mm256_set1_ps(1.0f), _mm256_castsi256_ps(e)));
}

// The same for any x, clamped into the range (where both ends are saturated).
__attribute__((target("avx2,fma"), always_inline)) inline __m256 sigmoidEstimate8(__m256 x) {
  const __m256 range = _mm256_set1_ps(kSigmoidEstimateRange);
  return sigmoidEstimateInRange8(
      _mm256_min_ps(_mm256_max_ps(x, _mm256_xor_ps(range, _mm256_set1_ps(-0.0f))), range));
}

// Folds x into a running check of finiteness, two operations a vector: the largest magnitude
// seen, on the bits (unsigned, so NaN's larger bits are kept, not lost as a float max loses them).
__attribute__((target("avx2"), always_inline)) inline __m256i foldMagnitude8(__m256i largest,
                                                                             __m256 x) {
  const __m256i magnitude = _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7fffffff));
  return _mm256_max_epu32(largest, magnitude);
}

// Whether every value folded into `largest` (from zero) had a magnitude of at most `bound` (a
// finite float >= 0); NaN never does.
__attribute__((target("avx2"), always_inline)) inline bool allWithin8(__m256i largest,
                                                                      float bound) {
  const __m256i over = _mm256_cmpgt_epi32(largest, _mm256_castps_si256(_mm256_set1_ps(bound)));
  return _mm256_testz_si256(over, over) != 0;
}

// Whether every value folded into `largest` (from zero) was finite: below infinity's bits.
__attribute__((target("avx2"), always_inline)) inline bool allFinite8(__m256i largest) {
  return allWithin8(largest, std::numeric_limits<float>::max());
}

}  // namespace moecomm::cpu
#endif
