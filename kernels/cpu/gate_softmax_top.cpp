#include "kernels/cpu/gate_softmax_top.hpp"

#include "kernels/cpu/gate_common.hpp"

#include <algorithm>
#include <limits>
#include <vector>
#if defined(__x86_64__)
#include "kernels/cpu/avx2_math.hpp"
#include "kernels/cpu/avx2_select.hpp"
#endif

namespace moecomm::cpu {

namespace {

// The most candidates a row ranks here; a row with more (ties at the floor) goes to gateGeneral.
constexpr int kCandidates = 64;

#if defined(__x86_64__)

// kExperts, when not 0, is the options' expert count as a constant (loops of known length).
template <int kExperts>
__attribute__((target("avx2,fma,bmi,popcnt"))) int64_t gateSoftmaxTopAvx2(
    const float* logits, int64_t tokens, const GateParams& p, int32_t* idx, float* weights,
    int32_t* candidate_idx, float* candidate_weights) {
  const int E = kExperts != 0 ? kExperts : p.experts;
  const int vectors = E / 8, half = vectors / 2;
  const int ranked_max = p.topk + p.candidates;
  const bool eight_slots = p.topk == 8 && p.candidates == 0;
  // Room for every position of a row (+ 8 for whole-vector writes past a count).
  std::vector<int32_t> index(E + 8), ranks(kCandidates + 8), ordered(std::max(E, kCandidates) + 1);
  std::vector<float> picked(kCandidates + 8), chosen(kCandidates + 8);
  std::vector<int> ranked(kCandidates);
  const __m256 excluded = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t non_finite = -1;
  // A row this loop does not settle goes to the general path, alone.
  auto general = [&](int64_t t) {
    const int64_t bad =
        gateGeneral(logits + t * E, 1, nullptr, p, idx + t * p.topk, weights + t * p.topk,
                    candidate_idx + t * p.candidates, candidate_weights + t * p.candidates);
    if (bad >= 0 && non_finite < 0) non_finite = t;
  };
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = logits + t * E;
    prefetchRowAhead(logits, tokens, E, t);
    // One pass: finiteness, and the lane-wise maxima of the two halves of the row, sixteen
    // maxima of disjoint sets whose ranked_max-th largest is a floor for the selection.
    __m256i largest = _mm256_setzero_si256();
    __m256 lo = excluded, hi = excluded;
#pragma GCC unroll 8
    for (int v = 0; v < half; ++v) {
      const __m256 x = _mm256_loadu_ps(row + 8 * v);
      largest = foldMagnitude8(largest, x);
      lo = _mm256_max_ps(lo, x);
    }
#pragma GCC unroll 8
    for (int v = half; v < vectors; ++v) {
      const __m256 x = _mm256_loadu_ps(row + 8 * v);
      largest = foldMagnitude8(largest, x);
      hi = _mm256_max_ps(hi, x);
    }
    if (!allFinite8(largest)) {
      general(t);
      continue;
    }
    alignas(32) float maxima[16];
    _mm256_store_ps(maxima, lo);
    _mm256_store_ps(maxima + 8, hi);
    // The n largest maxima are n values at distinct positions of the row.
    const __m256 floor = _mm256_set1_ps(nthLargest(maxima, 16, ranked_max));
    int found = 0;
#pragma GCC unroll 8
    for (int v = 0; v < vectors; ++v) {
      found = appendAtLeast8(row + 8 * v, floor, 8 * v, index.data(), found);
    }
    if (found <= 16 && orderSixteen(row, index.data(), found, ordered.data())) {
      std::copy_n(ordered.data(), ranked_max, ranked.data());
    } else if (found <= kCandidates) {
      rankCandidates(row, index.data(), found, ranked_max, ranked.data(), picked.data(),
                     ranks.data(), ordered.data());
    } else {
      general(t);
      continue;
    }
    // exp(logit - the largest logit) for the ranked few: the general path's expShifted, the same
    // operations in the same order.
    if (eight_slots) {
      const __m256i which = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ranked.data()));
      const __m256 top = _mm256_set1_ps(row[ranked[0]]);
      writeEightSlots(p, t, which, exp8(_mm256_sub_ps(_mm256_i32gather_ps(row, which, 4), top)),
                      idx, weights);
      continue;
    }
    writeSlotsByLogits(p, t, row, ranked.data(), ranked_max, picked.data(), chosen.data(), idx,
                       weights, candidate_idx, candidate_weights);
  }
  return non_finite;
}
#endif

}  // namespace

bool fusedSoftmaxTopApplies(const GateParams& p, bool has_bias) {
#if defined(__x86_64__)
  static const bool cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("bmi") && __builtin_cpu_supports("popcnt");
  const bool ranks_logits = (p.score == 0 && p.renormalize) || p.score == 2;
  const int ranked_max = p.topk + p.candidates;
  return cpu && ranks_logits && !has_bias && p.num_groups <= 1 && p.experts % 8 == 0 &&
         p.experts >= 16 && ranked_max >= 1 && ranked_max <= 16 && ranked_max <= p.experts;
#else
  (void)p;
  (void)has_bias;
  return false;
#endif
}

int64_t gateSoftmaxTop(const float* logits, int64_t tokens, const GateParams& p, int32_t* idx,
                       float* weights, int32_t* candidate_idx, float* candidate_weights) {
#if defined(__x86_64__)
  if (p.experts == 256) {
    return gateSoftmaxTopAvx2<256>(logits, tokens, p, idx, weights, candidate_idx,
                                   candidate_weights);
  }
  return gateSoftmaxTopAvx2<0>(logits, tokens, p, idx, weights, candidate_idx, candidate_weights);
#else
  return gateGeneral(logits, tokens, nullptr, p, idx, weights, candidate_idx, candidate_weights);
#endif
}

}  // namespace moecomm::cpu
