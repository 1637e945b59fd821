#include "kernels/cpu/group_scores.hpp"

#include <limits>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace moecomm::cpu {

namespace {

constexpr float kExcluded = -std::numeric_limits<float>::infinity();

// The sum of the two largest of n finite values (the one value when n == 1). With SSE2 and n a
// multiple of 4: the largest by vector max, then the largest of the rest (the largest again when
// it occurs twice).
float topTwoSum(const float* v, int n) {
#if defined(__SSE2__)
  if (n >= 8 && n % 4 == 0) {
    __m128 m = _mm_loadu_ps(v);
    for (int i = 4; i < n; i += 4) m = _mm_max_ps(m, _mm_loadu_ps(v + i));
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
    const float first = _mm_cvtss_f32(m);
    const __m128 top = _mm_set1_ps(first), excluded = _mm_set1_ps(kExcluded);
    __m128 rest = excluded;
    int copies = 0;
    for (int i = 0; i < n; i += 4) {
      const __m128 x = _mm_loadu_ps(v + i);
      const __m128 is_top = _mm_cmpeq_ps(x, top);
      static constexpr int kBits[16] = {0, 1, 1, 2, 1, 2, 2, 3,
                                        1, 2, 2, 3, 2, 3, 3, 4};  // no popcnt in SSE2
      copies += kBits[_mm_movemask_ps(is_top)];
      rest = _mm_max_ps(rest, _mm_or_ps(_mm_and_ps(is_top, excluded), _mm_andnot_ps(is_top, x)));
    }
    if (copies >= 2) return first + first;
    rest = _mm_max_ps(rest, _mm_shuffle_ps(rest, rest, _MM_SHUFFLE(1, 0, 3, 2)));
    rest = _mm_max_ps(rest, _mm_shuffle_ps(rest, rest, _MM_SHUFFLE(2, 3, 0, 1)));
    return first + _mm_cvtss_f32(rest);
  }
#endif
  float first = v[0], second = kExcluded;
  for (int i = 1; i < n; ++i) {
    if (v[i] > first) {
      second = first;
      first = v[i];
    } else if (v[i] > second) {
      second = v[i];
    }
  }
  return n >= 2 ? first + second : first;
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) float horizontalMax(__m256 v) {
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_max_ps(h, _mm_shuffle_ps(h, h, _MM_SHUFFLE(1, 0, 3, 2)));
  h = _mm_max_ps(h, _mm_shuffle_ps(h, h, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtss_f32(h);
}

// Groups of whole 8-float vectors: each lane keeps its two best (first, second) across the
// group's vectors; the group's best is the largest first, and its second best is the largest of
// what remains once one copy of the best is taken out. No branches, and groups are independent,
// so the loop overlaps them.
__attribute__((target("avx2,bmi"))) void groupTopTwoSumsAvx2(const float* values, int groups,
                                                             int per_group, float* scores) {
  const __m256 excluded = _mm256_set1_ps(kExcluded);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int g = 0; g < groups; ++g) {
    const float* v = values + static_cast<int64_t>(g) * per_group;
    __m256 first = _mm256_loadu_ps(v), second = excluded;
    for (int i = 8; i < per_group; i += 8) {
      const __m256 x = _mm256_loadu_ps(v + i);
      second = _mm256_max_ps(second, _mm256_min_ps(first, x));
      first = _mm256_max_ps(first, x);
    }
    const float best = horizontalMax(first);
    const auto at_best = static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_cmp_ps(first, _mm256_set1_ps(best), _CMP_EQ_OQ)));
    const __m256 one_copy = _mm256_castsi256_ps(
        _mm256_cmpeq_epi32(lane, _mm256_set1_epi32(static_cast<int>(_tzcnt_u32(at_best)))));
    const __m256 rest = _mm256_max_ps(second, _mm256_blendv_ps(first, excluded, one_copy));
    scores[g] = best + horizontalMax(rest);
  }
}
#endif

}  // namespace

void groupTopTwoSums(const float* values, int groups, int per_group, float* scores) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi");
  if (avx2 && per_group >= 8 && per_group % 8 == 0) {
    groupTopTwoSumsAvx2(values, groups, per_group, scores);
    return;
  }
#endif
  for (int g = 0; g < groups; ++g) {
    scores[g] = topTwoSum(values + static_cast<int64_t>(g) * per_group, per_group);
  }
}

#if defined(__x86_64__)
// Eight groups' ranks at a time against every group, then the kept ones by mask, in order.
__attribute__((target("avx2,bmi"))) int keptGroupsAvx2(const float* scores, int groups, int keep,
                                                     int* kept) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i limit = _mm256_set1_epi32(keep);
  int count = 0;
  for (int g = 0; g < groups; g += 8) {
    const __m256 mine = _mm256_loadu_ps(scores + g);
    const __m256i position = _mm256_add_epi32(lane, _mm256_set1_epi32(g));
    __m256i rank = _mm256_setzero_si256();
    for (int h = 0; h < groups; ++h) {
      const __m256 other = _mm256_broadcast_ss(scores + h);
      const __m256 earlier =
          _mm256_castsi256_ps(_mm256_cmpgt_epi32(position, _mm256_set1_epi32(h)));
      const __m256 beats =
          _mm256_or_ps(_mm256_cmp_ps(other, mine, _CMP_GT_OQ),
                       _mm256_and_ps(_mm256_cmp_ps(other, mine, _CMP_EQ_OQ), earlier));
      rank = _mm256_sub_epi32(rank, _mm256_castps_si256(beats));
    }
    auto mask = static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(limit, rank))));
    while (mask != 0) {
      kept[count++] = g + static_cast<int>(_tzcnt_u32(mask));
      mask &= mask - 1;
    }
  }
  return count;
}
#endif

int keptGroups(const float* scores, int groups, int keep, int* kept) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi");
  if (avx2 && groups % 8 == 0) return keptGroupsAvx2(scores, groups, keep, kept);
#endif
  // A group's rank is the number of groups that beat it: a higher score, or the same score and a
  // lower index. Branch-free; groups are few (tens at most).
  int count = 0;
  for (int g = 0; g < groups; ++g) {
    int rank = 0;
    for (int h = 0; h < groups; ++h) {
      rank += static_cast<int>(scores[h] > scores[g]) +
              (static_cast<int>(scores[h] == scores[g]) & static_cast<int>(h < g));
    }
    kept[count] = g;
    count += rank < keep ? 1 : 0;
  }
  return count;
}

}  // namespace moecomm::cpu
