#include "kernels/cpu/gating.hpp"

#include "kernels/cpu/vector_math.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace moecomm::cpu {

namespace {

constexpr float kExcluded = -std::numeric_limits<float>::infinity();

// Indices of the `n` largest values, descending, ties to the lower index; excluded (-inf) entries
// are never chosen, so fewer than n may come back.
int rankTop(const float* values, int count, int n, int* out) {
  int filled = 0;
  float threshold = kExcluded;  // the n-th best so far, once n are held
  for (int i = 0; i < count; ++i) {
    const float v = values[i];
    if (v == kExcluded || (filled == n && !(v > threshold))) continue;
    int pos = filled < n ? filled++ : n - 1;
    while (pos > 0 && v > values[out[pos - 1]]) {
      out[pos] = out[pos - 1];
      --pos;
    }
    out[pos] = i;
    if (filled == n) threshold = values[out[n - 1]];
  }
  return filled;
}

}  // namespace

void gate(const float* logits, int64_t tokens, const float* bias, const GateParams& p, int32_t* idx,
          float* weights, int32_t* candidate_idx, float* candidate_weights) {
  const int E = p.experts;
  const int ranked_max = p.topk + p.candidates;
  std::vector<float> raw(E), select(E), group_score(std::max(p.num_groups, 1));
  std::vector<int> ranked(ranked_max), groups(std::max(p.num_groups, 1)), best2(2);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = logits + t * E;
    // raw: the quantity weights are made of; select: what is ranked (raw + bias).
    if (p.score == 1) {
      sigmoid(row, raw.data(), E);
    } else {
      const float max = *std::max_element(row, row + E);
      expShifted(row, max, raw.data(), E);
      if (p.score == 0) {
        float sum = 0.0f;
        for (int e = 0; e < E; ++e) sum += raw[e];
        const float inverse = 1.0f / sum;
        for (int e = 0; e < E; ++e) raw[e] *= inverse;
      }
    }
    for (int e = 0; e < E; ++e) {
      select[e] = (p.score == 2 ? row[e] : raw[e]) + (bias ? bias[e] : 0.0f);
    }
    if (p.num_groups > 1) {
      const int per_group = E / p.num_groups;
      for (int g = 0; g < p.num_groups; ++g) {
        int n =
            rankTop(select.data() + g * per_group, per_group, std::min(2, per_group), best2.data());
        float s = 0.0f;
        for (int i = 0; i < n; ++i) s += select[g * per_group + best2[i]];
        group_score[g] = s;
      }
      rankTop(group_score.data(), p.num_groups, p.topk_groups, groups.data());
      std::vector<bool> keep(p.num_groups, false);
      for (int i = 0; i < p.topk_groups; ++i) keep[groups[i]] = true;
      for (int e = 0; e < E; ++e) {
        if (!keep[e / per_group]) select[e] = kExcluded;
      }
    }
    const int found = rankTop(select.data(), E, ranked_max, ranked.data());
    float norm = 1.0f;
    if (p.renormalize || p.score == 2) {
      norm = 0.0f;
      for (int j = 0; j < std::min(found, p.topk); ++j) norm += raw[ranked[j]];
    }
    for (int j = 0; j < ranked_max; ++j) {
      const bool have = j < found;
      const int32_t e = have ? ranked[j] : -1;
      const float w = have ? p.scaling * raw[e] / norm : 0.0f;
      if (j < p.topk) {
        idx[t * p.topk + j] = e;
        weights[t * p.topk + j] = w;
      } else {
        candidate_idx[t * p.candidates + (j - p.topk)] = e;
        candidate_weights[t * p.candidates + (j - p.topk)] = w;
      }
    }
  }
}

}  // namespace moecomm::cpu
