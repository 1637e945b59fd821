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

// The indices of the values at or above `floor`, ascending, into `index` (room for `limit`), for
// rows of whole 8-float vectors. Returns -1 when the floor is an excluded entry (-inf) or more
// than `limit` values pass (many ties at the top). The comparisons of 64 values become one word
// of bits, and only its set bits are visited: a dozen of 256 pass a tight floor, so walking the
// bits beats packing every vector. `offset` is added to every index written.
__attribute__((target("avx2,popcnt,bmi"), always_inline)) inline int packAtLeastInline(
    const float* values, int count, float floor, int limit, int32_t* index, int32_t offset) {
  if (!(floor > -std::numeric_limits<float>::infinity())) return -1;
  const __m256 low = _mm256_set1_ps(floor);
  int found = 0;
  for (int base = 0; base < count; base += 64) {
    const int vectors = std::min(8, (count - base) / 8);
    uint64_t bits = 0;
    for (int v = 0; v < vectors; ++v) {
      const auto mask = static_cast<uint32_t>(_mm256_movemask_ps(
          _mm256_cmp_ps(_mm256_loadu_ps(values + base + 8 * v), low, _CMP_GE_OQ)));
      bits |= static_cast<uint64_t>(mask) << (8 * v);
    }
    if (found + static_cast<int>(_mm_popcnt_u64(bits)) > limit) return -1;
    for (; bits != 0; bits = _blsr_u64(bits)) {
      index[found++] = offset + base + static_cast<int32_t>(_tzcnt_u64(bits));
    }
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

}  // namespace moecomm::cpu
#endif
