// DeepSeek-V3's gate (sigmoid scores, expert bias, a group limit) as one fused AVX2 loop over the
// rows. It selects and weighs exactly as gate()'s general path does, from the same building
// blocks, but without that path's per-step setup and scratch bookkeeping on every token, which at
// E = 256 was half of its instructions.
#pragma once

#include "kernels/cpu/gating.hpp"

#include <cstdint>

namespace moecomm::cpu {

// Whether the fused loop takes these options on this CPU: sigmoid scores; groups a multiple of 8,
// each of whole 8-float vectors and at most 64 experts; at most two ranked experts per kept group
// (so the kept groups' second bests give the selection's floor); AVX2, FMA, BMI and POPCNT.
bool fusedGroupedSigmoidApplies(const GateParams& params);

// gate() for options fusedGroupedSigmoidApplies accepts, with gate()'s contract.
int64_t gateGroupedSigmoid(const float* logits, int64_t tokens, const float* bias,
                           const GateParams& params, int32_t* idx, float* weights,
                           int32_t* candidate_idx, float* candidate_weights);

}  // namespace moecomm::cpu
