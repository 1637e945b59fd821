// Ranks of eight values at once among a row: how many entries beat each one (a larger value, or
// an equal value at a lower position). Distinct positions get distinct ranks, so ranks are a
// permutation of [0, count) and ties go to the lower position. x86-64 with AVX2 only: callers
// check the CPU first.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

namespace moecomm::cpu {

// The ranks of values[first .. first + 8) among values[0 .. count); lanes past count are
// meaningless (values must have room for them to be read).
__attribute__((target("avx2"), always_inline)) inline __m256i ranksOfEight(const float* values,
                                                                           int count, int first) {
  const __m256 mine = _mm256_loadu_ps(values + first);
  const __m256i position =
      _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(first));
  __m256i rank = _mm256_setzero_si256();
  for (int b = 0; b < count; ++b) {
    const __m256 other = _mm256_broadcast_ss(values + b);
    const __m256 earlier = _mm256_castsi256_ps(_mm256_cmpgt_epi32(position, _mm256_set1_epi32(b)));
    const __m256 beats =
        _mm256_or_ps(_mm256_cmp_ps(other, mine, _CMP_GT_OQ),
                     _mm256_and_ps(_mm256_cmp_ps(other, mine, _CMP_EQ_OQ), earlier));
    rank = _mm256_sub_epi32(rank, _mm256_castps_si256(beats));
  }
  return rank;
}

// The same by a larger value alone: half the work, and equal to ranksOfEight when no two of the
// values are equal (equal ones then share the lowest rank of their run).
__attribute__((target("avx2"), always_inline)) inline __m256i strictRanksOfEight(
    const float* values, int count, int first) {
  const __m256 mine = _mm256_loadu_ps(values + first);
  __m256i rank = _mm256_setzero_si256();
  for (int b = 0; b < count; ++b) {
    const __m256 beats = _mm256_cmp_ps(_mm256_broadcast_ss(values + b), mine, _CMP_GT_OQ);
    rank = _mm256_sub_epi32(rank, _mm256_castps_si256(beats));
  }
  return rank;
}

}  // namespace moecomm::cpu
#endif
