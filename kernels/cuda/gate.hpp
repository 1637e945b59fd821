// The router's gate on the GPU: scores, optional group limit, ranked top-k with renormalization,
// scaling and expert bias, and reroute candidates. The same semantics and tie-break as
// kernels/cpu/gating.hpp (ties go to the lower expert and group id). No capacity here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cpu/gating.hpp"

namespace moecomm::cuda {

inline constexpr int kGateMaxExperts = 1024;

// logits [tokens, experts] f32 and bias (null or [experts] f32) on the device. Writes idx/weights
// [tokens, topk] and, when params.candidates > 0, candidate_idx/weights [tokens, candidates].
// A token with a non-finite logit (or a non-finite bias entry) gets -1 / 0 in every slot and
// lowers *bad_token (device int, set by the caller to INT32_MAX beforehand) to its index, so the
// caller can refuse the routing instead of using it. Ordered on `stream`; no host synchronization.
cudaError_t gate(const float* logits, int64_t tokens, const float* bias,
                 const cpu::GateParams& params, int32_t* idx, float* weights,
                 int32_t* candidate_idx, float* candidate_weights, int32_t* bad_token,
                 cudaStream_t stream);

}  // namespace moecomm::cuda
