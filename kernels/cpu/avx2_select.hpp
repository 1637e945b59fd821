// AVX2 building blocks of top-n selection, inline for kernels that fuse them: the candidates at or
// above a floor, and their ranks. Callers check the CPU first.
#pragma once

#if defined(__x86_64__)
#include "kernels/cpu/simd_ranks.hpp"

#include <immintrin.h>
#include <algorithm>
#include <cstdint>
#include <limits>

namespace moecomm::cpu {

// For each 8-bit mask, the positions of its set bits, ascending, one a byte (the rest zero).
struct SetPositionTable {
  uint64_t entry[256];
};

constexpr SetPositionTable makeSetPositionTable() {
  SetPositionTable table{};
  for (unsigned mask = 0; mask < 256; ++mask) {
    int filled = 0;
    for (unsigned bit = 0; bit < 8; ++bit) {
      if ((mask >> bit & 1u) != 0) table.entry[mask] |= uint64_t{bit} << (8 * filled++);
    }
  }
  return table;
}

inline constexpr SetPositionTable kSetPositions = makeSetPositionTable();

// Writes base + the positions of mask's set bits at out[count...] and returns the new count,
// without a branch: all eight lanes are stored, so out needs room for count + 8.
__attribute__((target("avx2,popcnt"), always_inline)) inline int appendSetPositions(unsigned mask,
                                                                                    int32_t base,
                                                                                    int32_t* out,
                                                                                    int count) {
  const __m128i bytes =
      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(&kSetPositions.entry[mask]));
  const __m256i positions = _mm256_add_epi32(_mm256_cvtepu8_epi32(bytes), _mm256_set1_epi32(base));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + count), positions);
  return count + _mm_popcnt_u32(mask);
}

// Appends base + the positions of the eight values at or above `low` (all lanes) at
// index[found...], as appendSetPositions does; returns the new count.
__attribute__((target("avx2,popcnt"), always_inline)) inline int appendAtLeast8(
    const float* values, __m256 low, int32_t base, int32_t* index, int found) {
  const auto mask = static_cast<unsigned>(
      _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(values), low, _CMP_GE_OQ)));
  return appendSetPositions(mask, base, index, found);
}

// The indices of the values at or above `floor`, ascending, into `index` (room for limit + 8), for
// rows of whole 8-float vectors; `offset` is added to every index written. Returns -1 when the
// floor is an excluded entry (-inf) or more than `limit` values pass (many ties at the top). Each
// vector's passing lanes are appended through a table, not bit by bit: no branch depends on how
// many pass.
__attribute__((target("avx2,popcnt"), always_inline)) inline int packAtLeastInline(
    const float* values, int count, float floor, int limit, int32_t* index, int32_t offset) {
  if (!(floor > -std::numeric_limits<float>::infinity())) return -1;
  const __m256 low = _mm256_set1_ps(floor);
  int found = 0;
  for (int v = 0; v < count; v += 8) {
    found = appendAtLeast8(values + v, low, offset + v, index, found);
    if (found > limit) return -1;
  }
  return found;
}

// packAtLeastInline over some groups of a row (ascending ids, per_group values each, whole
// vectors), positions in the whole row; index has room for limit + 8.
__attribute__((target("avx2,popcnt"), always_inline)) inline int packGroupsAtLeast(
    const float* values, int per_group, const int* groups, int num_groups, float floor, int limit,
    int32_t* index) {
  int found = 0;
  for (int i = 0; i < num_groups; ++i) {
    const int at = groups[i] * per_group;
    const int more =
        packAtLeastInline(values + at, per_group, floor, limit - found, index + found, at);
    if (more < 0) return -1;
    found += more;
  }
  return found;
}

// The rank of each of values[0, found) among them (a larger value, or an equal one earlier), into
// ranks[0, found); both arrays have room for found + 8. Ties are rare among a row's candidates, so
// the ranks are first taken by a larger value alone (half the comparisons). Those are the true
// ranks exactly when they sum to found (found - 1) / 2: a run of m equal values shares its lowest
// rank, and sums less than m distinct ranks would. Otherwise they are taken again with ties broken
// by position.
__attribute__((target("avx2"), always_inline)) inline void rankEach(const float* values, int found,
                                                                    int32_t* ranks) {
  for (int a = 0; a < found; a += 8) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ranks + a),
                        strictRanksOfEight(values, found, a));
  }
  int64_t sum = 0;
  for (int i = 0; i < found; ++i) sum += ranks[i];
  if (sum == int64_t{found} * (found - 1) / 2) return;
  for (int a = 0; a < found; a += 8) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ranks + a), ranksOfEight(values, found, a));
  }
}

// The top n of `found` candidates (ascending positions in `index`) into out, best first, ties to
// the lower position; out gets min(n, found). Buffers: picked and ranks have room for found + 8,
// ordered for found. NaNs compare false, so their ranks can collide and leave slots unwritten:
// those then hold a position of this row, not a stale one (the gate discards such rows, but must
// stay in bounds).
__attribute__((target("avx2"), always_inline)) inline void rankCandidates(
    const float* values, const int32_t* index, int found, int n, int* out, float* picked,
    int32_t* ranks, int32_t* ordered) {
  for (int i = 0; i < found; ++i) picked[i] = values[index[i]];
  rankEach(picked, found, ranks);
  std::fill_n(ordered, found, found > 0 ? index[0] : 0);
  for (int i = 0; i < found; ++i) ordered[ranks[i]] = index[i];
  std::copy_n(ordered, std::min(n, found), out);
}

// The order of found <= 16 candidates (positions index[0, found) in values), best first, into
// ordered[0, found), in loops of fixed length: a row's candidate count does not steer a branch.
// Returns false when two of them tie (the caller then ranks them with ties broken). ordered has
// room for 17: the unused lanes all write ordered[found].
__attribute__((target("avx2"), always_inline)) inline bool orderSixteen(const float* values,
                                                                        const int32_t* index,
                                                                        int found,
                                                                        int32_t* ordered) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i count = _mm256_set1_epi32(found);
  const __m256i real_lo = _mm256_cmpgt_epi32(count, lane);
  const __m256i real_hi = _mm256_cmpgt_epi32(count, _mm256_add_epi32(lane, _mm256_set1_epi32(8)));
  // Unused lanes read position 0 and then rank as -inf, below every candidate.
  const __m256i at_lo =
      _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(index)), real_lo);
  const __m256i at_hi =
      _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(index + 8)), real_hi);
  const __m256 excluded = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256 lo = _mm256_blendv_ps(excluded, _mm256_i32gather_ps(values, at_lo, 4),
                                     _mm256_castsi256_ps(real_lo));
  const __m256 hi = _mm256_blendv_ps(excluded, _mm256_i32gather_ps(values, at_hi, 4),
                                     _mm256_castsi256_ps(real_hi));
  alignas(32) float all[16];
  _mm256_store_ps(all, lo);
  _mm256_store_ps(all + 8, hi);
  const __m256i rank_lo = strictRanksOfEight(all, 16, 0);
  const __m256i rank_hi = strictRanksOfEight(all, 16, 8);
  // Distinct values give the ranks 0 .. found - 1; a tie makes them sum to less (as in rankEach).
  const __m256i both =
      _mm256_add_epi32(_mm256_and_si256(rank_lo, real_lo), _mm256_and_si256(rank_hi, real_hi));
  __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(both), _mm256_extracti128_si256(both, 1));
  sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, _MM_SHUFFLE(1, 0, 3, 2)));
  sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, _MM_SHUFFLE(2, 3, 0, 1)));
  if (_mm_cvtsi128_si32(sum) != found * (found - 1) / 2) return false;
  alignas(32) int32_t rank[16], position[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(rank), rank_lo);
  _mm256_store_si256(reinterpret_cast<__m256i*>(rank + 8), rank_hi);
  _mm256_store_si256(reinterpret_cast<__m256i*>(position), at_lo);
  _mm256_store_si256(reinterpret_cast<__m256i*>(position + 8), at_hi);
  for (int i = 0; i < 16; ++i) ordered[rank[i]] = position[i];
  return true;
}

__attribute__((target("avx2"), always_inline)) inline float smallestOf8(__m256 v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_min_ss(m, _mm_shuffle_ps(m, m, 1)));
}

__attribute__((target("avx2"), always_inline)) inline float largestOf8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}

// The n-th largest of `count` values (a multiple of 8), ties counted: the smallest value that
// fewer than n others exceed.
__attribute__((target("avx2"), always_inline)) inline float nthLargest(const float* values,
                                                                       int count, int n) {
  const __m256i limit = _mm256_set1_epi32(n);
  __m256 floor = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  for (int a = 0; a < count; a += 8) {
    const __m256 in_top =
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(limit, strictRanksOfEight(values, count, a)));
    floor = _mm256_min_ps(floor, _mm256_blendv_ps(floor, _mm256_loadu_ps(values + a), in_top));
  }
  return smallestOf8(floor);
}

// packGroupsAtLeast for a constant group size: the vectors of a group unrolled, and no check of a
// limit between them (index has room for every value of the kept groups, + 8).
template <int kPerGroup>
__attribute__((target("avx2,popcnt"), always_inline)) inline int packKeptGroups(
    const float* values, const int* kept, int kept_groups, float floor, int32_t* index) {
  const __m256 low = _mm256_set1_ps(floor);
  int found = 0;
  for (int i = 0; i < kept_groups; ++i) {
    const int at = kept[i] * kPerGroup;
    for (int v = 0; v < kPerGroup; v += 8)
      found = appendAtLeast8(values + at + v, low, at + v, index, found);
  }
  return found;
}

}  // namespace moecomm::cpu
#endif
