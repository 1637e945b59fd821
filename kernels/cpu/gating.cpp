#include "kernels/cpu/gating.hpp"

#include "kernels/cpu/vector_math.hpp"

#include <algorithm>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

namespace moecomm::cpu {

namespace {

constexpr float kExcluded = -std::numeric_limits<float>::infinity();

// Indices of the `n` largest values, descending, ties to the lower index; excluded (-inf) entries
// are never chosen, so fewer than n may come back.
// Reused buffers, one set per gate call (thread_local would cost a TLS lookup per call in a
// shared library).
struct RankScratch {
  std::vector<float> held, maxima, order;
};

int rankTop(const float* values, int count, int n, int* out, RankScratch& scratch) {
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
  if (n > 0 && blocks >= 2 * n) {
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
      constexpr int kBits[16] = {0, 1, 1, 2, 1, 2, 2, 3,
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

}  // namespace

void gate(const float* logits, int64_t tokens, const float* bias, const GateParams& p, int32_t* idx,
          float* weights, int32_t* candidate_idx, float* candidate_weights) {
  const int E = p.experts;
  const int ranked_max = p.topk + p.candidates;
  RankScratch scratch;
  std::vector<float> raw(E), select(E), group_score(std::max(p.num_groups, 1));
  std::vector<int> ranked(ranked_max), groups(std::max(p.num_groups, 1));
  std::vector<float> compact;
  // Renormalized softmax without bias or groups: softmax is monotonic, so rank the logits as they
  // are, and the global denominator cancels in w_j = p_j / sum of the kept p. Only the ranked
  // experts need an exp: one pass over each row instead of five.
  const bool ranks_logits = p.score == 0 && p.renormalize && bias == nullptr && p.num_groups <= 1;
  std::vector<float> exps(ranks_logits ? ranked_max : 0);
  // Token t's ranked experts into its k slots, then its reroute candidates; the j-th ranked
  // expert weighs scaling * a(j) / norm, and slots past `found` are empty (-1, 0).
  auto write = [&](int64_t t, int found, auto a, float norm) {
    for (int j = 0; j < ranked_max; ++j) {
      const bool have = j < found;
      const int32_t e = have ? ranked[j] : -1;
      const float w = have ? p.scaling * a(j) / norm : 0.0f;
      if (j < p.topk) {
        idx[t * p.topk + j] = e;
        weights[t * p.topk + j] = w;
      } else {
        candidate_idx[t * p.candidates + (j - p.topk)] = e;
        candidate_weights[t * p.candidates + (j - p.topk)] = w;
      }
    }
  };
  for (int64_t t = 0; t < tokens && ranks_logits; ++t) {
    const float* row = logits + t * E;
    const int found = rankTop(row, E, ranked_max, ranked.data(), scratch);
    const float top = found > 0 ? row[ranked[0]] : 0.0f;
    float norm = 0.0f;
    for (int j = 0; j < found; ++j) {
      exps[j] = std::exp(row[ranked[j]] - top);
      if (j < p.topk) norm += exps[j];
    }
    write(
        t, found, [&](int j) { return exps[j]; }, norm);
  }
  for (int64_t t = 0; t < tokens && !ranks_logits; ++t) {
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
    // select = (logit for top-k-then-softmax, else raw) + bias, one branch-free pass.
    const float* base = p.score == 2 ? row : raw.data();
    if (bias != nullptr) {
      for (int e = 0; e < E; ++e) select[e] = base[e] + bias[e];
    } else {
      std::copy_n(base, E, select.data());
    }
    int found = 0;
    if (p.num_groups > 1) {
      // Group score: the sum of its two best select values (all finite here).
      const int per_group = E / p.num_groups;
      for (int g = 0; g < p.num_groups; ++g) {
        group_score[g] = topTwoSum(select.data() + g * per_group, per_group);
      }
      const int kept_groups =
          rankTop(group_score.data(), p.num_groups, p.topk_groups, groups.data(), scratch);
      // Rank only the kept groups' experts, laid side by side in ascending group order so that
      // ties still go to the lower expert id.
      std::sort(groups.begin(), groups.begin() + kept_groups);
      compact.resize(static_cast<size_t>(kept_groups) * per_group);
      for (int i = 0; i < kept_groups; ++i) {
        std::copy_n(select.data() + groups[i] * per_group, per_group,
                    compact.data() + i * per_group);
      }
      found = rankTop(compact.data(), kept_groups * per_group, ranked_max, ranked.data(), scratch);
      for (int j = 0; j < found; ++j) {
        ranked[j] = groups[ranked[j] / per_group] * per_group + ranked[j] % per_group;
      }
    } else {
      found = rankTop(select.data(), E, ranked_max, ranked.data(), scratch);
    }
    float norm = 1.0f;
    if (p.renormalize || p.score == 2) {
      norm = 0.0f;
      for (int j = 0; j < std::min(found, p.topk); ++j) norm += raw[ranked[j]];
    }
    write(
        t, found, [&](int j) { return raw[ranked[j]]; }, norm);
  }
}

}  // namespace moecomm::cpu
