// exp and sigmoid over arrays of finite floats. With AVX2 and FMA: avx2_math.hpp's eight-lane
// formulas, the same ones the fused gate kernels inline (this file is built without -ffast-math,
// which would let the compiler rewrite them differently here than there). Elsewhere: the portable
// loops of vector_math_portable.cpp.
#include "kernels/cpu/vector_math.hpp"

#include "kernels/cpu/finite.hpp"
#include "kernels/cpu/vector_math_portable.hpp"

#include <algorithm>
#if defined(__x86_64__)
#include "kernels/cpu/avx2_math.hpp"
#endif

namespace moecomm::cpu {

namespace {

#if defined(__x86_64__)
const bool kAvx2Fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");

// A row's last n % 8 values go through the same eight-lane code, padded: every element of a row
// comes out of one formula, whatever its position.
__attribute__((target("avx2,fma"))) void expShiftedAvx2(const float* in, float shift, float* out,
                                                        int n) {
  const __m256 s = _mm256_set1_ps(shift);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(in + i), s)));
  }
  if (i < n) {
    alignas(32) float tail[8] = {};
    std::copy_n(in + i, n - i, tail);
    _mm256_store_ps(tail, exp8(_mm256_sub_ps(_mm256_load_ps(tail), s)));
    std::copy_n(tail, n - i, out + i);
  }
}

// Also checks the inputs' finiteness on their bits, in the same pass.
__attribute__((target("avx2,fma"))) bool sigmoidAvx2(const float* in, const float* bias, float* out,
                                                     int n) {
  __m256i largest = _mm256_setzero_si256();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(in + i);
    largest = foldMagnitude8(largest, x);
    const __m256 s = sigmoid8(x);
    _mm256_storeu_ps(out + i, bias != nullptr ? _mm256_add_ps(s, _mm256_loadu_ps(bias + i)) : s);
  }
  if (i < n) {
    alignas(32) float tail[8] = {}, tail_bias[8] = {};
    std::copy_n(in + i, n - i, tail);
    if (bias != nullptr) std::copy_n(bias + i, n - i, tail_bias);
    const __m256 x = _mm256_load_ps(tail);
    largest = foldMagnitude8(largest, x);
    _mm256_store_ps(tail, _mm256_add_ps(sigmoid8(x), _mm256_load_ps(tail_bias)));
    std::copy_n(tail, n - i, out + i);
  }
  return allFinite8(largest);
}
#endif

}  // namespace

void expShifted(const float* in, float shift, float* out, int n) {
#if defined(__x86_64__)
  if (kAvx2Fma) return expShiftedAvx2(in, shift, out, n);
#endif
  expShiftedPortable(in, shift, out, n);
}

bool sigmoid(const float* in, const float* bias, float* out, int n) {
#if defined(__x86_64__)
  if (kAvx2Fma) return sigmoidAvx2(in, bias, out, n);
#endif
  sigmoidPortable(in, bias, out, n);
  return allFinite(in, n);
}

}  // namespace moecomm::cpu
