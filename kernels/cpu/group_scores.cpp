#include "kernels/cpu/group_scores.hpp"

#include <limits>
#if defined(__x86_64__)
#include "kernels/cpu/avx2_groups.hpp"
#endif

namespace moecomm::cpu {

namespace {

struct TopTwo {
  float first, second;  // second is -inf for a group of one
};

// The two largest of n values, the largest twice when it occurs twice.
TopTwo topTwo(const float* v, int n) {
  float first = v[0], second = -std::numeric_limits<float>::infinity();
  for (int i = 1; i < n; ++i) {
    if (v[i] > first) {
      second = first;
      first = v[i];
    } else if (v[i] > second) {
      second = v[i];
    }
  }
  return {first, second};
}

#if defined(__x86_64__)
// Whole sets of eight groups; returns how many groups were done.
__attribute__((target("avx2"))) int groupTopTwoSumsAvx2(const float* values, int groups,
                                                        int per_group, float* scores,
                                                        float* seconds) {
  int g = 0;
  for (; g + 8 <= groups; g += 8) {
    eightGroupTopTwoSums(values + static_cast<int64_t>(g) * per_group, per_group, scores + g,
                         seconds != nullptr ? seconds + g : nullptr);
  }
  return g;
}

__attribute__((target("avx2"))) int keptGroupsAvx2(const float* scores, int groups, int keep,
                                                   int* kept) {
  return keptGroupsOfEights(scores, groups, keep, kept);
}
#endif

}  // namespace

void groupTopTwoSums(const float* values, int groups, int per_group, float* scores,
                     float* seconds) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  int g = 0;  // groups done
  if (avx2 && per_group >= 8 && per_group % 8 == 0) {
    g = groupTopTwoSumsAvx2(values, groups, per_group, scores, seconds);
  }
#else
  int g = 0;
#endif
  for (; g < groups; ++g) {  // the rest, one group at a time
    const TopTwo top = topTwo(values + static_cast<int64_t>(g) * per_group, per_group);
    scores[g] = per_group >= 2 ? top.first + top.second : top.first;
    if (seconds != nullptr) seconds[g] = top.second;
  }
}

int keptGroups(const float* scores, int groups, int keep, int* kept) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
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
