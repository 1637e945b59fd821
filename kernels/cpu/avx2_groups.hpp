// AVX2 building blocks of group-limited routing, inline for kernels that fuse them: the two best
// values of eight groups at once, the kept groups by rank, and for eight groups their margin in
// vector steps. Callers check the CPU first.
#pragma once

#if defined(__x86_64__)
#include "kernels/cpu/avx2_select.hpp"
#include "kernels/cpu/simd_ranks.hpp"

#include <immintrin.h>
#include <cstdint>
#include <limits>

namespace moecomm::cpu {

// The 8x8 transpose: row r of the result holds lane r of each input.
__attribute__((target("avx2"), always_inline)) inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// One group's vectors folded lane by lane into the two best values each lane has seen (first,
// runner-up), starting from -inf for both.
__attribute__((target("avx2"), always_inline)) inline void foldTopTwo(__m256 x, __m256& first,
                                                                      __m256& runner_up) {
  runner_up = _mm256_max_ps(runner_up, _mm256_min_ps(first, x));
  first = _mm256_max_ps(first, x);
}

// Eight groups' lane-wise (first, runner-up) into their scores (best + second best) and second
// bests. A group's best is its largest first, and its second best the largest of what remains once
// one copy of the best is taken out. Both sets are transposed so that lane g holds group g, and
// the reductions run across vectors for all eight together; taking out one copy of the best walks
// the lanes in order and removes the first match.
__attribute__((target("avx2"), always_inline)) inline void reduceEightGroups(__m256 first[8],
                                                                             __m256 runner_up[8],
                                                                             float* scores,
                                                                             float* seconds) {
  const __m256 excluded = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  transpose8(first);
  transpose8(runner_up);
  __m256 best = first[0];
  for (int l = 1; l < 8; ++l) best = _mm256_max_ps(best, first[l]);
  __m256 rest = runner_up[0], removed = _mm256_setzero_ps();
  for (int l = 0; l < 8; ++l) {
    if (l > 0) rest = _mm256_max_ps(rest, runner_up[l]);
    const __m256 take = _mm256_andnot_ps(removed, _mm256_cmp_ps(first[l], best, _CMP_EQ_OQ));
    removed = _mm256_or_ps(removed, take);
    rest = _mm256_max_ps(rest, _mm256_blendv_ps(first[l], excluded, take));
  }
  _mm256_storeu_ps(scores, _mm256_add_ps(best, rest));
  if (seconds != nullptr) _mm256_storeu_ps(seconds, rest);
}

// Eight groups of per_group values (whole vectors) at once: scores and second bests.
__attribute__((target("avx2"), always_inline)) inline void eightGroupTopTwoSums(const float* values,
                                                                                int per_group,
                                                                                float* scores,
                                                                                float* seconds) {
  const __m256 excluded = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 first[8], runner_up[8];
  for (int g = 0; g < 8; ++g) {
    const float* v = values + static_cast<int64_t>(g) * per_group;
    first[g] = excluded;
    runner_up[g] = excluded;
    for (int i = 0; i < per_group; i += 8)
      foldTopTwo(_mm256_loadu_ps(v + i), first[g], runner_up[g]);
  }
  reduceEightGroups(first, runner_up, scores, seconds);
}

// The `keep` best groups by score (ties to the lower group), ascending, into kept, which has room
// for all `groups` (a multiple of 8): it first holds every group's rank, then the kept ids are
// compacted over it without a branch. Ranks are taken by a larger score alone unless two scores
// tie (their sum tells, as in rankEach).
__attribute__((target("avx2"), always_inline)) inline int keptGroupsOfEights(const float* scores,
                                                                             int groups, int keep,
                                                                             int* kept) {
  int64_t sum = 0;
  for (int g = 0; g < groups; g += 8) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(kept + g),
                        strictRanksOfEight(scores, groups, g));
  }
  for (int g = 0; g < groups; ++g) sum += kept[g];
  if (sum != int64_t{groups} * (groups - 1) / 2) {
    for (int g = 0; g < groups; g += 8) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(kept + g), ranksOfEight(scores, groups, g));
    }
  }
  int count = 0;
  for (int g = 0; g < groups; ++g) {  // count <= g: each rank is read before its slot is reused
    const int rank = kept[g];
    kept[count] = g;
    count += rank < keep ? 1 : 0;
  }
  return count;
}

// Eight groups' kept ones in vector steps: their ids ascending (into kept, room for 8), the floor
// (their smallest second best), and the gap from the weakest kept score down to the best other
// one. False when the groups that fewer than `keep` beat are not exactly `keep` (a tie at the
// boundary, or NaN).
__attribute__((target("avx2,popcnt"), always_inline)) inline bool keptOfEight(
    const float* scores, const float* seconds, int keep, int* kept, float& floor, float& gap) {
  const __m256 score = _mm256_loadu_ps(scores);
  const __m256 in = _mm256_castsi256_ps(
      _mm256_cmpgt_epi32(_mm256_set1_epi32(keep), strictRanksOfEight(scores, 8, 0)));
  const auto mask = static_cast<unsigned>(_mm256_movemask_ps(in));
  if (static_cast<int>(_mm_popcnt_u32(mask)) != keep) return false;
  appendSetPositions(mask, 0, kept, 0);
  const __m256 above = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  const __m256 below = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  floor = smallestOf8(_mm256_blendv_ps(above, _mm256_loadu_ps(seconds), in));
  gap = smallestOf8(_mm256_blendv_ps(above, score, in)) -
        largestOf8(_mm256_blendv_ps(score, below, in));
  return true;
}

}  // namespace moecomm::cpu
#endif
