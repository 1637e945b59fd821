// What every gate kernel does the same way: fetch rows ahead, and write a token's ranked experts
// and their weights into its output slots.
#pragma once

#include "kernels/cpu/gating.hpp"
#include "kernels/cpu/vector_math.hpp"

#include <algorithm>
#include <cstdint>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace moecomm::cpu {

// Requests the row a page ahead of row t: the hardware prefetcher stops at page boundaries, and a
// row's compute is long enough to hide the memory latency of a later one.
inline void prefetchRowAhead(const float* logits, int64_t tokens, int experts, int64_t t) {
  const int64_t ahead = std::max<int64_t>(1, 4096 / (static_cast<int64_t>(experts) * 4));
  if (t + ahead >= tokens) return;
  const char* next = reinterpret_cast<const char*>(logits + (t + ahead) * experts);
  for (int64_t off = 0; off < static_cast<int64_t>(experts) * 4; off += 64) {
    __builtin_prefetch(next + off);
  }
}

// What the ranked experts' weights are divided by: the sum of the top-k's `chosen` values when
// the weights are renormalized (always for top-k-then-softmax), else 1.
inline float slotNorm(const GateParams& p, const float* chosen, int found) {
  if (!p.renormalize && p.score != 2) return 1.0f;
  float norm = 0.0f;
  for (int j = 0; j < std::min(found, p.topk); ++j) norm += chosen[j];
  return norm;
}

// Token t's ranked experts into its k slots, then its reroute candidates; the j-th ranked expert
// weighs scaling * chosen[j] / norm, and slots past `found` are empty (-1, 0).
inline void writeSlots(const GateParams& p, int64_t t, const int* ranked, int found,
                       const float* chosen, float norm, int32_t* idx, float* weights,
                       int32_t* candidate_idx, float* candidate_weights) {
  const float scale = p.scaling / norm;  // one division a token, not one a slot
  // Two plain loops (slots, then candidates) that the compiler vectorizes.
  int32_t* slot_idx = idx + t * p.topk;
  float* slot_weights = weights + t * p.topk;
  for (int j = 0; j < p.topk; ++j) {
    slot_idx[j] = j < found ? ranked[j] : -1;
    slot_weights[j] = j < found ? chosen[j] * scale : 0.0f;
  }
  for (int j = p.topk; j < p.topk + p.candidates; ++j) {
    candidate_idx[t * p.candidates + (j - p.topk)] = j < found ? ranked[j] : -1;
    candidate_weights[t * p.candidates + (j - p.topk)] = j < found ? chosen[j] * scale : 0.0f;
  }
}

// Token t's slots when its experts were ranked by their logits (a renormalized softmax, or top-k
// then softmax): each weighs exp(logit - the top logit), taken for the `found` ranked only.
// picked and chosen have room for found.
inline void writeSlotsByLogits(const GateParams& p, int64_t t, const float* row, const int* ranked,
                               int found, float* picked, float* chosen, int32_t* idx,
                               float* weights, int32_t* candidate_idx, float* candidate_weights) {
  const float top = found > 0 ? row[ranked[0]] : 0.0f;
  for (int j = 0; j < found; ++j) picked[j] = row[ranked[j]];
  expShifted(picked, top, chosen, found);
  writeSlots(p, t, ranked, found, chosen, slotNorm(p, chosen, found), idx, weights, candidate_idx,
             candidate_weights);
}

#if defined(__x86_64__)
// writeSlots for eight slots without candidates, from vectors (experts, and the chosen values in
// slot order): the same operations in the same order, so the same bits.
__attribute__((target("avx"), always_inline)) inline void writeEightSlots(
    const GateParams& p, int64_t t, __m256i ranked, __m256 chosen, int32_t* idx, float* weights) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, chosen);
  const __m256 scale = _mm256_set1_ps(p.scaling / slotNorm(p, lanes, 8));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + t * 8), ranked);
  _mm256_storeu_ps(weights + t * 8, _mm256_mul_ps(chosen, scale));
}
#endif

}  // namespace moecomm::cpu
