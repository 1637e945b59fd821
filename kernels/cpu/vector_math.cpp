// exp and sigmoid over arrays of finite floats. With AVX2 and FMA: a Cody-Waite range reduction
// and Cephes' degree-6 polynomial, about 1 ulp, eight lanes at once. Elsewhere: glibc's libmvec
// (this file is built with -ffast-math, which is what makes GCC call its vector expf). Nothing
// here compares floats against infinity or NaN: sigmoid's finiteness check reads the bits.
#include "kernels/cpu/vector_math.hpp"

#include "kernels/cpu/finite.hpp"

#include <algorithm>
#include <cmath>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace moecomm::cpu {

namespace {

void expShiftedPortable(const float* in, float shift, float* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = std::exp(in[i] - shift);
}

void sigmoidPortable(const float* in, const float* bias, float* out, float* biased, int n) {
  // The finiteness check is the caller's here: -ffast-math would fold a float one away.
  // exp's argument capped below overflow: 1 / (1 + inf) becomes NaN through -ffast-math's
  // reciprocal estimate, where the cap gives 0 (as it should, to within 1e-38).
  for (int i = 0; i < n; ++i) {
    const float s = 1.0f / (1.0f + std::exp(std::min(-in[i], 88.0f)));
    if (out != nullptr) out[i] = s;
    biased[i] = bias != nullptr ? s + bias[i] : s;
  }
}

#if defined(__x86_64__)
const bool kAvx2Fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");

// exp(x) for x clamped to [-87.34, 88.38], where 2^n stays a normal float: below, the result is
// about 1e-38 instead of 0, which no weight can tell apart.
__attribute__((target("avx2,fma"))) __m256 exp8(__m256 x) {
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

// 1 / d from the hardware estimate and one Newton step: within about an ulp, without a divide.
__attribute__((target("avx2,fma"))) __m256 reciprocal8(__m256 d) {
  const __m256 y = _mm256_rcp_ps(d);
  return _mm256_fmadd_ps(y, _mm256_fnmadd_ps(d, y, _mm256_set1_ps(1.0f)), y);
}

__attribute__((target("avx2,fma"))) void expShiftedAvx2(const float* in, float shift, float* out,
                                                        int n) {
  const __m256 s = _mm256_set1_ps(shift);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(in + i), s)));
  }
  if (i < n) expShiftedPortable(in + i, shift, out + i, n - i);
}

// Also checks the inputs' finiteness on their bits (an all-ones exponent), in the same pass.
__attribute__((target("avx2,fma"))) bool sigmoidAvx2(const float* in, const float* bias, float* out,
                                                     float* biased, int n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i exponent = _mm256_set1_epi32(0x7f800000);
  __m256i bad = _mm256_setzero_si256();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(in + i);
    bad = _mm256_or_si256(
        bad, _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(x), exponent), exponent));
    const __m256 e = exp8(_mm256_xor_ps(x, sign));
    const __m256 s = reciprocal8(_mm256_add_ps(one, e));
    if (out != nullptr) _mm256_storeu_ps(out + i, s);
    _mm256_storeu_ps(biased + i, bias != nullptr ? _mm256_add_ps(s, _mm256_loadu_ps(bias + i)) : s);
  }
  if (i < n) {
    sigmoidPortable(in + i, bias != nullptr ? bias + i : nullptr,
                    out != nullptr ? out + i : nullptr, biased + i, n - i);
  }
  return _mm256_testz_si256(bad, bad) != 0 && allFinite(in + i, n - i);
}
#endif

}  // namespace

void expShifted(const float* in, float shift, float* out, int n) {
#if defined(__x86_64__)
  if (kAvx2Fma) return expShiftedAvx2(in, shift, out, n);
#endif
  expShiftedPortable(in, shift, out, n);
}

bool sigmoid(const float* in, const float* bias, float* out, float* biased, int n) {
#if defined(__x86_64__)
  if (kAvx2Fma) return sigmoidAvx2(in, bias, out, biased, n);
#endif
  sigmoidPortable(in, bias, out, biased, n);
  return allFinite(in, n);
}

}  // namespace moecomm::cpu
