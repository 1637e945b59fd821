#include "kernels/cpu/gating.hpp"

#include "kernels/cpu/finite.hpp"
#include "kernels/cpu/gate_common.hpp"
#include "kernels/cpu/gate_grouped_sigmoid.hpp"
#include "kernels/cpu/gate_softmax_top.hpp"
#include "kernels/cpu/group_scores.hpp"
#include "kernels/cpu/topk.hpp"
#include "kernels/cpu/vector_math.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace moecomm::cpu {

int64_t gate(const float* logits, int64_t tokens, const float* bias, const GateParams& p,
             int32_t* idx, float* weights, int32_t* candidate_idx, float* candidate_weights) {
  if (fusedGroupedSigmoidApplies(p)) {
    return gateGroupedSigmoid(logits, tokens, bias, p, idx, weights, candidate_idx,
                              candidate_weights);
  }
  if (fusedSoftmaxTopApplies(p, bias != nullptr)) {
    return gateSoftmaxTop(logits, tokens, p, idx, weights, candidate_idx, candidate_weights);
  }
  return gateGeneral(logits, tokens, bias, p, idx, weights, candidate_idx, candidate_weights);
}

int64_t gateGeneral(const float* logits, int64_t tokens, const float* bias, const GateParams& p,
                    int32_t* idx, float* weights, int32_t* candidate_idx,
                    float* candidate_weights) {
  const int E = p.experts;
  const int ranked_max = p.topk + p.candidates;
  TopScratch scratch;
  std::vector<float> raw(E), select(E), group_score(std::max(p.num_groups, 1)),
      group_second(group_score.size());
  std::vector<int> ranked(ranked_max), groups(std::max(p.num_groups, 1));
  // Renormalized softmax without bias or groups: softmax is monotonic, so rank the logits as they
  // are, and the global denominator cancels in w_j = p_j / sum of the kept p. Only the ranked
  // experts need an exp: one pass over each row instead of five.
  const bool ranks_logits = p.score == 0 && p.renormalize && bias == nullptr && p.num_groups <= 1;
  // The ranked experts' logits and the quantity their weights are made of (exp or sigmoid),
  // computed for those few only where the score pass does not need them for every expert.
  std::vector<float> picked(ranked_max), chosen(ranked_max);
  int64_t non_finite = -1;
  for (int64_t t = 0; t < tokens && ranks_logits; ++t) {
    const float* row = logits + t * E;
    prefetchRowAhead(logits, tokens, E, t);
    if (non_finite < 0 && !allFinite(row, E)) non_finite = t;
    const int found = selectTop(row, E, ranked_max, ranked.data(), scratch);
    writeSlotsByLogits(p, t, row, ranked.data(), found, picked.data(), chosen.data(), idx, weights,
                       candidate_idx, candidate_weights);
  }
  for (int64_t t = 0; t < tokens && !ranks_logits; ++t) {
    const float* row = logits + t * E;
    prefetchRowAhead(logits, tokens, E, t);
    // raw: the quantity weights are made of; select: what is ranked (raw + bias). The sigmoid
    // pass writes select only: the few ranked experts' sigmoids are taken again below.
    const bool finite = p.score == 1 ? sigmoid(row, bias, select.data(), E) : allFinite(row, E);
    if (non_finite < 0 && !finite) non_finite = t;
    if (p.score != 1) {
      const float max = *std::max_element(row, row + E);
      expShifted(row, max, raw.data(), E);
      if (p.score == 0) {
        float sum = 0.0f;
        for (int e = 0; e < E; ++e) sum += raw[e];
        const float inverse = 1.0f / sum;
        for (int e = 0; e < E; ++e) raw[e] *= inverse;
      }
    }
    // select = (logit for top-k-then-softmax, else raw) + bias, one branch-free pass (the sigmoid
    // pass writes it itself).
    if (p.score != 1) {
      const float* base = p.score == 2 ? row : raw.data();
      if (bias != nullptr) {
        for (int e = 0; e < E; ++e) select[e] = base[e] + bias[e];
      } else {
        std::copy_n(base, E, select.data());
      }
    }
    int found = 0;
    if (p.num_groups > 1) {
      // Group score: the sum of its two best select values (all finite here).
      const int per_group = E / p.num_groups;
      groupTopTwoSums(select.data(), p.num_groups, per_group, group_score.data(),
                      group_second.data());
      // Rank only the kept groups' experts (ties still to the lower expert id).
      const int kept_groups =
          keptGroups(group_score.data(), p.num_groups, p.topk_groups, groups.data());
      // Each kept group has two values at or above its second best, so when the kept groups
      // hold at least ranked_max such values, the smallest of their second bests is a floor
      // for the selection, known without another pass.
      float floor = -std::numeric_limits<float>::infinity();
      if (ranked_max <= 2 * kept_groups) {
        floor = std::numeric_limits<float>::infinity();
        for (int i = 0; i < kept_groups; ++i) floor = std::min(floor, group_second[groups[i]]);
      }
      found = selectTopInGroups(select.data(), per_group, groups.data(), kept_groups, ranked_max,
                                floor, ranked.data(), scratch);
    } else {
      found = selectTop(select.data(), E, ranked_max, ranked.data(), scratch);
    }
    if (p.score == 1) {
      for (int j = 0; j < found; ++j) picked[j] = row[ranked[j]];
      sigmoid(picked.data(), nullptr, chosen.data(), found);
    } else {
      for (int j = 0; j < found; ++j) chosen[j] = raw[ranked[j]];
    }
    writeSlots(p, t, ranked.data(), found, chosen.data(), slotNorm(p, chosen.data(), found), idx,
               weights, candidate_idx, candidate_weights);
  }
  return non_finite;
}

}  // namespace moecomm::cpu
