// DeepSeek-V3's gate (sigmoid scores, expert bias, a group limit) as one fused AVX2 loop over the
// rows. It selects and weighs exactly as gate()'s general path does, from the same building
// blocks, but without that path's per-step setup and scratch bookkeeping on every token (at
// E = 256 half of its instructions), and it ranks by a sigmoid estimate of half the cost, which
// decides all but the rows with a near tie.
#pragma once

#include "kernels/cpu/gating.hpp"

#include <cstdint>

namespace moecomm::cpu {

// Whether the fused loop takes these options on this CPU: sigmoid scores; groups a multiple of 8,
// each of whole 8-float vectors and at most 64 experts; at most two ranked experts per kept group
// (so the kept groups' second bests give the selection's floor); AVX2, FMA, BMI and POPCNT.
bool fusedGroupedSigmoidApplies(const GateParams& params);

// gate() for options fusedGroupedSigmoidApplies accepts, with gate()'s contract. Rows are ranked
// by a cheaper sigmoid estimate and settled with the exact sigmoid wherever a decision lies within
// the estimate's error, so the result is gate()'s exactly; exact_rows (optional) gets how many rows
// were decided with exact sigmoids throughout (near ties, non-finite logits).
int64_t gateGroupedSigmoid(const float* logits, int64_t tokens, const float* bias,
                           const GateParams& params, int32_t* idx, float* weights,
                           int32_t* candidate_idx, float* candidate_weights,
                           int64_t* exact_rows = nullptr);

}  // namespace moecomm::cpu
