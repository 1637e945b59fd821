// The softmax routers that rank the logits themselves (a renormalized softmax, or top-k then
// softmax; no bias, no groups: Mixtral's and most dense-MoE gates) as one fused AVX2 loop over the
// rows: the finiteness check and the selection's floor in one pass, the candidates at or above the
// floor packed and ranked in loops of fixed length, and exp taken for the ranked few only.
#pragma once

#include "kernels/cpu/gating.hpp"

#include <cstdint>

namespace moecomm::cpu {

// Whether the fused loop takes these options on this CPU: softmax with renormalization or top-k
// then softmax, no bias, no group limit, whole 8-float vectors (at least two), at most 16 ranked
// experts (top-k and reroute candidates together); AVX2, FMA, BMI and POPCNT.
bool fusedSoftmaxTopApplies(const GateParams& params, bool has_bias);

// gate() without a bias for options fusedSoftmaxTopApplies accepts, with gate()'s contract and
// bit for bit its general path's result (a row it cannot settle, non-finite or with many ties at
// the floor, is handed to that path).
int64_t gateSoftmaxTop(const float* logits, int64_t tokens, const GateParams& params, int32_t* idx,
                       float* weights, int32_t* candidate_idx, float* candidate_weights);

}  // namespace moecomm::cpu
