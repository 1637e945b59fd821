// Per-token gate: scores, optional group limit, ranked selection and weights. No capacity here.
#pragma once

#include <cstdint>

namespace moecomm::cpu {

struct GateParams {
  int experts;
  int topk;
  int score;  // 0 softmax, 1 sigmoid, 2 top-k then softmax (ScoreFunction values)
  bool renormalize;
  float scaling;
  int num_groups;  // <= 1: no group limit
  int topk_groups;
  int candidates;  // extra ranked experts past the top-k, for rerouting
};

// logits [tokens, experts]; bias null or [experts], finite. Writes per token: idx/weights [topk]
// and candidate idx/weights [candidates] (-1 / 0 where fewer eligible experts exist). Candidates
// carry the weight they would have had in the token's top-k (same normalizer). Returns the first
// token with a non-finite logit, or -1: the logits are checked as they are read, and when one is
// not finite the whole output is meaningless (indices stay in range) and must be discarded.
int64_t gate(const float* logits, int64_t tokens, const float* bias, const GateParams& params,
             int32_t* idx, float* weights, int32_t* candidate_idx, float* candidate_weights);

// gate()'s general path, for every option and CPU. gate() takes a fused kernel instead where one
// fits the options; the tests hold those kernels to this path.
int64_t gateGeneral(const float* logits, int64_t tokens, const float* bias, const GateParams& p,
                    int32_t* idx, float* weights, int32_t* candidate_idx, float* candidate_weights);

}  // namespace moecomm::cpu
