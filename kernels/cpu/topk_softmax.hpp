// Top-k over the softmax of router logits, one token (row) at a time.
#pragma once

#include <cstdint>

namespace moecomm::cpu {

// logits: [tokens, experts] f32, all finite. Writes idx [tokens, k] and weights [tokens, k]:
// the k highest probabilities in descending order, ties to the lower expert id. With renormalize
// the k weights of a token sum to 1.
void topkSoftmax(const float* logits, int64_t tokens, int experts, int k, bool renormalize,
                 int32_t* idx, float* weights);

}  // namespace moecomm::cpu
