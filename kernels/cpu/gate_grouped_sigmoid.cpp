#include "kernels/cpu/gate_grouped_sigmoid.hpp"

#include "kernels/cpu/gate_common.hpp"
#include "kernels/cpu/topk.hpp"

#include <algorithm>
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
__attribute__((target("avx2,fma,bmi,popcnt"))) int64_t gateGroupedSigmoidAvx2(
    const float* logits, int64_t tokens, const float* bias, const GateParams& p, int32_t* idx,
    float* weights, int32_t* candidate_idx, float* candidate_weights) {
  const int E = p.experts;
  const int groups = p.num_groups;
  const int per_group = E / groups;
  const int ranked_max = p.topk + p.candidates;
  // Every buffer a row needs, sized once; reads and writes of whole vectors past a count have
  // room (the + 8s).
  std::vector<float> select(E), no_bias(bias == nullptr ? E : 0), scores(groups), seconds(groups);
  std::vector<float> picked(std::max(kCandidates, roundUpTo8(ranked_max)) + 8);
  std::vector<float> chosen(roundUpTo8(ranked_max));
  std::vector<int32_t> index(kCandidates + 8), ranks(kCandidates + 8), ordered(kCandidates);
  std::vector<int> kept(groups), ranked(ranked_max);
  TopScratch scratch;  // for the rows that leave the fused selection
  const float* b = bias != nullptr ? bias : no_bias.data();
  const bool eight_slots = p.topk == 8 && p.candidates == 0;
  int64_t non_finite = -1;
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = logits + t * E;
    prefetchRowAhead(logits, tokens, E, t);
    // select = sigmoid(logit) + bias, what is ranked; the finiteness check in the same pass.
    // (Folding the group scores into this loop measured slower: it stalls the sigmoid pipeline.)
    __m256i largest = _mm256_setzero_si256();
    for (int e = 0; e < E; e += 8) {
      const __m256 x = _mm256_loadu_ps(row + e);
      largest = foldMagnitude8(largest, x);
      _mm256_storeu_ps(select.data() + e, _mm256_add_ps(sigmoid8(x), _mm256_loadu_ps(b + e)));
    }
    if (non_finite < 0 && !allFinite8(largest)) non_finite = t;
    for (int g = 0; g < groups; g += 8) {
      eightGroupTopTwoSums(select.data() + g * per_group, per_group, scores.data() + g,
                           seconds.data() + g);
    }
    const int kept_groups = keptGroupsOfEights(scores.data(), groups, p.topk_groups, kept.data());
    // Each kept group has two values at or above its second best, so the smallest of those is a
    // floor for the selection (fewer kept groups than that come only from NaN rows).
    float floor = -std::numeric_limits<float>::infinity();
    int found = -1;
    if (ranked_max <= 2 * kept_groups) {
      floor = std::numeric_limits<float>::infinity();
      for (int i = 0; i < kept_groups; ++i) floor = std::min(floor, seconds[kept[i]]);
      found = packGroupsAtLeast(select.data(), per_group, kept.data(), kept_groups, floor,
                                kCandidates, index.data());
    }
    int ranked_count = 0;
    if (found >= 0) {
      rankCandidates(select.data(), index.data(), found, ranked_max, ranked.data(), picked.data(),
                     ranks.data(), ordered.data());
      ranked_count = std::min(found, ranked_max);
    } else {
      ranked_count = selectTopInGroups(select.data(), per_group, kept.data(), kept_groups,
                                       ranked_max, floor, ranked.data(), scratch);
    }
    // The weights are made of the unbiased sigmoids, taken again for the ranked few.
    if (eight_slots && ranked_count == 8) {
      // DeepSeek-V3's shape, one vector: the same operations as below in the same order, so the
      // same bits.
      const __m256i which = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ranked.data()));
      const __m256 s = sigmoid8(_mm256_i32gather_ps(row, which, 4));
      _mm256_storeu_ps(chosen.data(), s);
      const __m256 scale = _mm256_set1_ps(p.scaling / slotNorm(p, chosen.data(), 8));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + t * 8), which);
      _mm256_storeu_ps(weights + t * 8, _mm256_mul_ps(s, scale));
      continue;
    }
    for (int j = 0; j < ranked_count; ++j) picked[j] = row[ranked[j]];
    for (int j = 0; j < ranked_count; j += 8) {
      _mm256_storeu_ps(chosen.data() + j, sigmoid8(_mm256_loadu_ps(picked.data() + j)));
    }
    writeSlots(p, t, ranked.data(), ranked_count, chosen.data(),
               slotNorm(p, chosen.data(), ranked_count), idx, weights, candidate_idx,
               candidate_weights);
  }
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
                           int32_t* candidate_idx, float* candidate_weights) {
#if defined(__x86_64__)
  return gateGroupedSigmoidAvx2(logits, tokens, bias, p, idx, weights, candidate_idx,
                                candidate_weights);
#else
  return gateGeneral(logits, tokens, bias, p, idx, weights, candidate_idx, candidate_weights);
#endif
}

}  // namespace moecomm::cpu
