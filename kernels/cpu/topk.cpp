#include "kernels/cpu/topk.hpp"

#include <algorithm>
#include <limits>
#if defined(__x86_64__)
#include "kernels/cpu/avx2_select.hpp"
#endif

namespace moecomm::cpu {

namespace {

constexpr float kExcluded = -std::numeric_limits<float>::infinity();

// Scratch only grows: shrinking and regrowing would value-initialize on every row.
template <typename T>
void growTo(std::vector<T>& v, size_t size) {
  if (v.size() < size) v.resize(size);
}

#if defined(__x86_64__)
__attribute__((target("avx2,popcnt,bmi"))) int packAtLeast(const float* values, int count,
                                                           float floor, int limit, int32_t* index) {
  return packAtLeastInline(values, count, floor, limit, index, 0);
}

__attribute__((target("avx2,popcnt"))) int packGroupsAtLeastAvx2(const float* values, int per_group,
                                                                 const int* groups, int num_groups,
                                                                 float floor, int limit,
                                                                 int32_t* index) {
  return packGroupsAtLeast(values, per_group, groups, num_groups, floor, limit, index);
}

// The candidates for the top n, left-packed into `index`: the values at or above a floor, for rows
// of whole 8-float vectors, at least 2n of them. The vectors are split into `sets` runs; the
// lane-wise maximum of each run is the maximum of a disjoint set of values (one lane of each of
// its vectors), so the n-th largest of these 8 * sets maxima has at least n values at or above
// it: it bounds the n-th largest value from below. With 8 * sets >= 2n it is tight: about n + 2
// values pass it on normal logits. Returns -1 when the floor is an excluded entry (-inf) or more
// than `limit` values pass (many ties at the top).
__attribute__((target("avx2,popcnt"))) int candidatesAboveFloor(const float* values, int count,
                                                                int n, int limit, int32_t* index,
                                                                TopScratch& scratch) {
  const int vectors = count / 8;
  const int sets = std::max(2, (2 * n + 7) / 8);
  std::vector<float>& maxima = scratch.maxima;
  growTo(maxima, static_cast<size_t>(8 * sets));
  int begin = 0;
  for (int g = 0; g < sets; ++g) {
    const int end = static_cast<int>(int64_t{vectors} * (g + 1) / sets);
    __m256 m = _mm256_loadu_ps(values + 8 * begin);
    for (int v = begin + 1; v < end; ++v) m = _mm256_max_ps(m, _mm256_loadu_ps(values + 8 * v));
    _mm256_storeu_ps(maxima.data() + 8 * g, m);
    begin = end;
  }
  return packAtLeast(values, count, nthLargest(maxima.data(), 8 * sets, n), limit, index);
}

// rankCandidates with the scratch's buffers, grown to fit.
__attribute__((target("avx2"))) void rankCandidatesInScratch(const float* values,
                                                             const int32_t* index, int found, int n,
                                                             int* out, TopScratch& scratch) {
  growTo(scratch.picked, static_cast<size_t>(found) + 8);
  growTo(scratch.ranks, static_cast<size_t>(found) + 8);
  growTo(scratch.ordered, static_cast<size_t>(found));
  rankCandidates(values, index, found, n, out, scratch.picked.data(), scratch.ranks.data(),
                 scratch.ordered.data());
}
#endif

// The general path: insertion into a sorted array of n, with blocks skipped by their maxima.
int rankByInsertion(const float* values, int count, int n, int* out, TopScratch& scratch) {
  // The held values, sorted like `out`: comparisons stay in this small array, not behind `out`.
  std::vector<float>& held = scratch.held;
  if (held.size() < static_cast<size_t>(n)) held.resize(static_cast<size_t>(n));
  float* best = held.data();
  int filled = 0;
  float threshold = kExcluded;  // the n-th best so far, once n are held
  auto consider = [&](int i) {
    const float v = values[i];
    if (v == kExcluded || (filled == n && !(v > threshold))) return;
    int pos = filled < n ? filled++ : n - 1;
    while (pos > 0 && v > best[pos - 1]) {
      out[pos] = out[pos - 1];
      best[pos] = best[pos - 1];
      --pos;
    }
    out[pos] = i;
    best[pos] = v;
    if (filled == n) threshold = best[n - 1];
  };
  int i = 0;
#if defined(__SSE2__)
  // Nothing below the n-th largest block maximum can be among the n largest values (the n largest
  // block maxima are n distinct values), so blocks whose maximum is below it are skipped whole,
  // and elements below it are never inserted. Blocks are still walked in index order, so ties go
  // to the lower index as before.
  constexpr int kBlock = 8;
  const int blocks = count / kBlock;
  if (blocks >= 2 * n) {
    std::vector<float>& maxima = scratch.maxima;
    std::vector<float>& order = scratch.order;
    maxima.resize(static_cast<size_t>(blocks));
    for (int b = 0; b < blocks; ++b) {
      const float* x = values + b * kBlock;
      __m128 m = _mm_max_ps(_mm_loadu_ps(x), _mm_loadu_ps(x + 4));
      m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
      m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
      maxima[b] = _mm_cvtss_f32(m);
    }
    // The n-th largest block maximum, by insertion into a descending array of n.
    order.assign(static_cast<size_t>(n), kExcluded);
    for (int b = 0; b < blocks; ++b) {
      const float v = maxima[b];
      if (!(v > order[n - 1])) continue;
      int pos = n - 1;
      while (pos > 0 && v > order[pos - 1]) {
        order[pos] = order[pos - 1];
        --pos;
      }
      order[pos] = v;
    }
    const float floor = order[n - 1];
    const __m128 low = _mm_set1_ps(floor);
    for (int b = 0; b < blocks; ++b) {
      if (maxima[b] < floor) continue;
      // Only the elements at or above the floor, in index order.
      const float* x = values + b * kBlock;
      unsigned mask = static_cast<unsigned>(_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x), low))) |
                      static_cast<unsigned>(_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x + 4), low)))
                          << 4;
      while (mask != 0) {
        consider(b * kBlock + __builtin_ctz(mask));
        mask &= mask - 1;
      }
    }
    i = blocks * kBlock;
  }
#endif
  for (; i < count; ++i) consider(i);
  return filled;
}

}  // namespace

int selectTop(const float* values, int count, int n, int* out, TopScratch& scratch) {
  return selectTopAbove(values, count, n, kExcluded, out, scratch);
}

int selectTopAbove(const float* values, int count, int n, float floor, int* out,
                   TopScratch& scratch) {
  if (n <= 0) return 0;
#if defined(__x86_64__)
  // Short rows rank every entry that is not excluded; long ones only those above a floor.
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  constexpr int kShortRow = 64;
  const int limit = std::max(kShortRow, 4 * n);
  std::vector<int32_t>& index = scratch.index;
  int found = -1;
  if (avx2 && count <= kShortRow) {
    growTo(index, static_cast<size_t>(count));
    found = 0;
    for (int i = 0; i < count; ++i) {  // branch-free compaction
      index[found] = i;
      found += values[i] != kExcluded ? 1 : 0;
    }
  } else if (avx2 && count % 8 == 0 && floor > kExcluded) {
    growTo(index, static_cast<size_t>(count) + 8);
    found = packAtLeast(values, count, floor, limit, index.data());
  }
  if (found < 0 && avx2 && count % 8 == 0 && count >= 16 * n) {
    growTo(index, static_cast<size_t>(count) + 8);
    found = candidatesAboveFloor(values, count, n, limit, index.data(), scratch);
  }
  if (found >= 0) {
    rankCandidatesInScratch(values, index.data(), found, n, out, scratch);
    return std::min(found, n);
  }
#endif
  return rankByInsertion(values, count, n, out, scratch);
}

int selectTopInGroups(const float* values, int per_group, const int* groups, int num_groups, int n,
                      float floor, int* out, TopScratch& scratch) {
  if (n <= 0) return 0;
#if defined(__x86_64__)
  // With a floor and whole vectors per group, the kept groups are packed where they lie: their
  // candidates' indices come out ascending, positions in the whole row.
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") &&
                           __builtin_cpu_supports("bmi");
  if (avx2 && per_group % 8 == 0 && floor > kExcluded) {
    const int limit = std::max(64, 4 * n);
    std::vector<int32_t>& index = scratch.index;
    growTo(index, static_cast<size_t>(limit) + 64);
    const int found =
        packGroupsAtLeastAvx2(values, per_group, groups, num_groups, floor, limit, index.data());
    if (found >= 0) {
      rankCandidatesInScratch(values, index.data(), found, n, out, scratch);
      return std::min(found, n);
    }
  }
#endif
  // Otherwise the kept groups side by side, in ascending group order so that ties still go to the
  // lower expert id, then back from compact positions to row positions.
  std::vector<float>& compact = scratch.compact;
  compact.resize(static_cast<size_t>(num_groups) * per_group);
  for (int i = 0; i < num_groups; ++i) {
    std::copy_n(values + groups[i] * per_group, per_group, compact.data() + i * per_group);
  }
  const int found = selectTopAbove(compact.data(), num_groups * per_group, n, floor, out, scratch);
  for (int j = 0; j < found; ++j) {
    const int slot = out[j] / per_group;
    out[j] += (groups[slot] - slot) * per_group;
  }
  return found;
}

}  // namespace moecomm::cpu
