#include "kernels/cpu/gate_grouped_sigmoid.hpp"

#include "kernels/cpu/gate_common.hpp"
#include "kernels/cpu/topk.hpp"
#include "kernels/cpu/vector_math.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>
#if defined(__x86_64__)
#include "kernels/cpu/avx2_groups.hpp"
#include "kernels/cpu/avx2_math.hpp"
#include "kernels/cpu/avx2_select.hpp"
#endif

namespace moecomm::cpu {

namespace {

// The most candidates a row ranks in the fused loop; a row with more (ties at the floor) takes
// the general selection.
constexpr int kCandidates = 64;

int roundUpTo8(int n) {
  return (n + 7) / 8 * 8;
}

#if defined(__x86_64__)

// How far a ranked value made of the sigmoid estimate may lie from the one made of sigmoid8: the
// estimate's error, plus room for rounding the bias sum (and a group's sum of two) at up to this
// magnitude. Infinite or NaN when the bias is, which sends every row to the exact path.
float estimateTolerance(const float* bias, int experts) {
  float largest = 0.0f;
  for (int e = 0; e < experts; ++e) {
    if (!(std::fabs(bias[e]) <= largest)) largest = std::fabs(bias[e]);
  }
  return kSigmoidEstimateError + (1.0f + largest) * 0x1p-20f;
}

// Every buffer a row needs, sized once; reads and writes of whole vectors past a count have room
// (the + 8s).
struct RowScratch {
  RowScratch(int experts, int groups, int ranked_max)
      : select(experts),
        scores(groups),
        seconds(groups),
        picked(std::max(kCandidates, roundUpTo8(ranked_max)) + 8),
        chosen(roundUpTo8(ranked_max)),
        index(std::max(kCandidates, experts) + 8),
        ranks(kCandidates + 8),
        ordered(kCandidates + 1),
        kept(groups),
        ranked(roundUpTo8(ranked_max)) {}
  std::vector<float> select, scores, seconds, picked, chosen;
  std::vector<int32_t> index, ranks, ordered;
  std::vector<int> kept, ranked;
  TopScratch general;  // for the rows that leave the fused selection
};

// The kept groups and the ranked experts of a row whose scores are in s.select, as gate()'s
// general path selects them (the ranked best first); returns how many were ranked.
__attribute__((target("avx2,fma,bmi,popcnt"))) int selectExactly(const GateParams& p,
                                                                 RowScratch& s) {
  const int groups = p.num_groups, per_group = p.experts / groups;
  const int ranked_max = p.topk + p.candidates;
  for (int g = 0; g < groups; g += 8) {
    eightGroupTopTwoSums(s.select.data() + g * per_group, per_group, s.scores.data() + g,
                         s.seconds.data() + g);
  }
  const int kept_groups = keptGroupsOfEights(s.scores.data(), groups, p.topk_groups, s.kept.data());
  // Each kept group has two values at or above its second best, so the smallest of those is a
  // floor for the selection (fewer kept groups than that come only from NaN rows).
  float floor = -std::numeric_limits<float>::infinity();
  int found = -1;
  if (ranked_max <= 2 * kept_groups) {
    floor = std::numeric_limits<float>::infinity();
    for (int i = 0; i < kept_groups; ++i) floor = std::min(floor, s.seconds[s.kept[i]]);
    found = packGroupsAtLeast(s.select.data(), per_group, s.kept.data(), kept_groups, floor,
                              kCandidates, s.index.data());
  }
  if (found >= 0) {
    rankCandidates(s.select.data(), s.index.data(), found, ranked_max, s.ranked.data(),
                   s.picked.data(), s.ranks.data(), s.ordered.data());
    return std::min(found, ranked_max);
  }
  return selectTopInGroups(s.select.data(), per_group, s.kept.data(), kept_groups, ranked_max,
                           floor, s.ranked.data(), s.general);
}

// The same selection from scores made of the sigmoid estimate, each within `tolerance` of its
// exact value. Returns ranked_max when every decision clears its tolerance, which makes the
// selected set the exact one (only its order may differ), else -1: the row is then decided with
// exact sigmoids. The decisions: the weakest kept group against the best other one (group scores
// move by up to 2 tolerances each), and the last ranked expert against the next (1 each).
// kGroups and kPerGroup, when not 0, are the options' values as constants (loops of known length).
template <int kGroups, int kPerGroup>
__attribute__((target("avx2,fma,bmi,popcnt"), always_inline)) inline int selectByEstimate(
    const GateParams& p, float tolerance, RowScratch& s) {
  const int groups = kGroups != 0 ? kGroups : p.num_groups;
  const int per_group = kPerGroup != 0 ? kPerGroup : p.experts / p.num_groups;
  const int ranked_max = p.topk + p.candidates;
  for (int g = 0; g < groups; g += 8) {
    eightGroupTopTwoSums(s.select.data() + g * per_group, per_group, s.scores.data() + g,
                         s.seconds.data() + g);
  }
  const int kept_groups = p.topk_groups;
  float floor = std::numeric_limits<float>::infinity(), gap = 0.0f;
  if constexpr (kGroups == 8) {
    if (!keptOfEight(s.scores.data(), s.seconds.data(), kept_groups, s.kept.data(), floor, gap)) {
      return -1;
    }
  } else {
    if (keptGroupsOfEights(s.scores.data(), groups, kept_groups, s.kept.data()) != kept_groups) {
      return -1;
    }
    // The kept ids are ascending: one walk over the groups tells kept from other.
    float weakest_kept = std::numeric_limits<float>::infinity();
    float best_other = -std::numeric_limits<float>::infinity();
    for (int g = 0, next = 0; g < groups; ++g) {
      if (next < kept_groups && s.kept[next] == g) {
        weakest_kept = std::min(weakest_kept, s.scores[g]);
        floor = std::min(floor, s.seconds[g]);
        ++next;
      } else {
        best_other = std::max(best_other, s.scores[g]);
      }
    }
    gap = weakest_kept - best_other;
  }
  if (!(gap > 4.0f * tolerance)) return -1;
  // At least ranked_max values lie at or above the floor, so any value left below floor - 3
  // tolerances trails the last ranked one by more than 2.
  int found = 0;
  if constexpr (kPerGroup != 0) {
    found = packKeptGroups<kPerGroup>(s.select.data(), s.kept.data(), kept_groups,
                                      floor - 3.0f * tolerance, s.index.data());
    if (found > kCandidates) return -1;
  } else {
    found = packGroupsAtLeast(s.select.data(), per_group, s.kept.data(), kept_groups,
                              floor - 3.0f * tolerance, kCandidates, s.index.data());
  }
  if (found < ranked_max) return -1;
  if (found <= 16 && orderSixteen(s.select.data(), s.index.data(), found, s.ordered.data())) {
    std::copy_n(s.ordered.data(), ranked_max, s.ranked.data());
  } else {
    rankCandidates(s.select.data(), s.index.data(), found, ranked_max, s.ranked.data(),
                   s.picked.data(), s.ranks.data(), s.ordered.data());
  }
  if (found > ranked_max) {
    const float last = s.select[s.ordered[ranked_max - 1]];
    const float next = s.select[s.ordered[ranked_max]];
    if (!(last - next > 2.0f * tolerance)) return -1;
  }
  return ranked_max;
}

// Puts n ranked experts, their chosen values and their exact ranked values (all three sorted in
// place) in the exact order: ranked value descending, ties to the lower expert, as the general
// path ranks them. The estimate's order is almost always right already, so an insertion sort does
// about n comparisons.
void orderExactly(int* ranked, float* chosen, float* values, int n) {
  for (int i = 1; i < n; ++i) {
    const int expert = ranked[i];
    const float v = values[i], c = chosen[i];
    int j = i;
    for (; j > 0 && (values[j - 1] < v || (values[j - 1] == v && ranked[j - 1] > expert)); --j) {
      ranked[j] = ranked[j - 1];
      chosen[j] = chosen[j - 1];
      values[j] = values[j - 1];
    }
    ranked[j] = expert;
    chosen[j] = c;
    values[j] = v;
  }
}

// Whether eight ranked experts with these ranked values are in the exact order.
__attribute__((target("avx2"), always_inline)) inline bool inExactOrder(__m256 value,
                                                                        __m256i expert) {
  const __m256i next_lane = _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7);
  const __m256 next = _mm256_permutevar8x32_ps(value, next_lane);
  const __m256i next_expert = _mm256_permutevar8x32_epi32(expert, next_lane);
  const __m256 before =
      _mm256_or_ps(_mm256_cmp_ps(value, next, _CMP_GT_OQ),
                   _mm256_and_ps(_mm256_cmp_ps(value, next, _CMP_EQ_OQ),
                                 _mm256_castsi256_ps(_mm256_cmpgt_epi32(next_expert, expert))));
  return (_mm256_movemask_ps(before) & 0x7f) == 0x7f;
}

template <int kGroups, int kPerGroup>
__attribute__((target("avx2,fma,bmi,popcnt"))) int64_t gateGroupedSigmoidAvx2(
    const float* logits, int64_t tokens, const float* bias, const GateParams& p, int32_t* idx,
    float* weights, int32_t* candidate_idx, float* candidate_weights, int64_t* exact_rows) {
  const int E = kGroups != 0 && kPerGroup != 0 ? kGroups * kPerGroup : p.experts;
  const int ranked_max = p.topk + p.candidates;
  RowScratch s(E, p.num_groups, ranked_max);
  std::vector<float> no_bias(bias == nullptr ? E : 0), exact(roundUpTo8(ranked_max));
  const float* b = bias != nullptr ? bias : no_bias.data();
  const float tolerance = estimateTolerance(b, E);
  const bool eight_slots = p.topk == 8 && p.candidates == 0;
  int64_t non_finite = -1, decided_exactly = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = logits + t * E;
    prefetchRowAhead(logits, tokens, E, t);
    // select = estimated sigmoid(logit) + bias, what is ranked; the finiteness check in the same
    // pass. (Folding the group scores into this loop measured slower: it stalls the pipeline.)
    __m256i largest = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int e = 0; e < E; e += 8) {
      const __m256 x = _mm256_loadu_ps(row + e);
      largest = foldMagnitude8(largest, x);
      _mm256_storeu_ps(s.select.data() + e,
                       _mm256_add_ps(sigmoidEstimateInRange8(x), _mm256_loadu_ps(b + e)));
    }
    // A logit beyond the estimate's range (or not finite) sends the row to the exact path.
    const bool in_range = allWithin8(largest, kSigmoidEstimateRange);
    if (!in_range && non_finite < 0 && !allFinite8(largest)) non_finite = t;
    int ranked_count = in_range ? selectByEstimate<kGroups, kPerGroup>(p, tolerance, s) : -1;
    const bool estimated = ranked_count >= 0;
    if (!estimated) {  // near a decision, or out of range: the exact scores decide
      ++decided_exactly;
      sigmoid(row, bias, s.select.data(), E);  // the general path's pass, formula and all
      ranked_count = selectExactly(p, s);
    }
    // The weights are made of the exact unbiased sigmoids, taken for the ranked few; the exact
    // ranked values (the same operations as the exact pass) order them.
    if (eight_slots && ranked_count == 8) {
      // DeepSeek-V3's shape, one vector: the same operations as below in the same order, so the
      // same bits.
      __m256i which = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.ranked.data()));
      __m256 chosen = sigmoid8(_mm256_i32gather_ps(row, which, 4));
      const __m256 value = _mm256_add_ps(chosen, _mm256_i32gather_ps(b, which, 4));
      if (estimated && !inExactOrder(value, which)) {
        _mm256_storeu_ps(s.chosen.data(), chosen);
        _mm256_storeu_ps(exact.data(), value);
        orderExactly(s.ranked.data(), s.chosen.data(), exact.data(), 8);
        which = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.ranked.data()));
        chosen = _mm256_loadu_ps(s.chosen.data());
      }
      writeEightSlots(p, t, which, chosen, idx, weights);
      continue;
    }
    for (int j = 0; j < ranked_count; ++j) s.picked[j] = row[s.ranked[j]];
    sigmoid(s.picked.data(), nullptr, s.chosen.data(), ranked_count);
    if (estimated) {
      for (int j = 0; j < ranked_count; ++j) exact[j] = s.chosen[j] + b[s.ranked[j]];
      orderExactly(s.ranked.data(), s.chosen.data(), exact.data(), ranked_count);
    }
    writeSlots(p, t, s.ranked.data(), ranked_count, s.chosen.data(),
               slotNorm(p, s.chosen.data(), ranked_count), idx, weights, candidate_idx,
               candidate_weights);
  }
  if (exact_rows != nullptr) *exact_rows = decided_exactly;
  return non_finite;
}
#endif

}  // namespace

bool fusedGroupedSigmoidApplies(const GateParams& p) {
#if defined(__x86_64__)
  static const bool cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("bmi") && __builtin_cpu_supports("popcnt");
  if (!cpu || p.score != 1 || p.num_groups < 8 || p.num_groups % 8 != 0) return false;
  if (p.experts % p.num_groups != 0) return false;
  const int per_group = p.experts / p.num_groups;
  const int ranked_max = p.topk + p.candidates;
  return per_group % 8 == 0 && per_group <= 64 && ranked_max >= 1 &&
         ranked_max <= 2 * p.topk_groups && ranked_max <= kCandidates;
#else
  (void)p;
  return false;
#endif
}

int64_t gateGroupedSigmoid(const float* logits, int64_t tokens, const float* bias,
                           const GateParams& p, int32_t* idx, float* weights,
                           int32_t* candidate_idx, float* candidate_weights, int64_t* exact_rows) {
#if defined(__x86_64__)
  if (p.num_groups == 8 && p.experts == 256) {  // DeepSeek-V3's shape, with constant loops
    return gateGroupedSigmoidAvx2<8, 32>(logits, tokens, bias, p, idx, weights, candidate_idx,
                                         candidate_weights, exact_rows);
  }
  return gateGroupedSigmoidAvx2<0, 0>(logits, tokens, bias, p, idx, weights, candidate_idx,
                                      candidate_weights, exact_rows);
#else
  if (exact_rows != nullptr) *exact_rows = tokens;
  return gateGeneral(logits, tokens, bias, p, idx, weights, candidate_idx, candidate_weights);
#endif
}

}  // namespace moecomm::cpu
