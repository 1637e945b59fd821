#include "kernels/cpu/topk_softmax.hpp"

#include <cmath>
#include <vector>

namespace moecomm::cpu {

void topkSoftmax(const float* logits, int64_t tokens, int experts, int k, bool renormalize,
                 int32_t* idx, float* weights) {
  std::vector<float> probs(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = logits + t * experts;
    float max_logit = row[0];
    for (int e = 1; e < experts; ++e) max_logit = std::fmax(max_logit, row[e]);
    float sum = 0.0f;
    for (int e = 0; e < experts; ++e) {
      probs[e] = std::exp(row[e] - max_logit);
      sum += probs[e];
    }
    for (int e = 0; e < experts; ++e) probs[e] /= sum;

    int32_t* out_idx = idx + t * k;
    float* out_w = weights + t * k;
    // Insertion into a sorted list of k: strict '>' keeps the lower id first on ties.
    int filled = 0;
    for (int e = 0; e < experts; ++e) {
      float p = probs[e];
      if (filled == k && !(p > out_w[k - 1])) continue;
      int pos = filled < k ? filled++ : k - 1;
      while (pos > 0 && p > out_w[pos - 1]) {
        out_w[pos] = out_w[pos - 1];
        out_idx[pos] = out_idx[pos - 1];
        --pos;
      }
      out_w[pos] = p;
      out_idx[pos] = e;
    }
    if (renormalize) {
      float total = 0.0f;
      for (int j = 0; j < k; ++j) total += out_w[j];
      for (int j = 0; j < k; ++j) out_w[j] /= total;
    }
  }
}

}  // namespace moecomm::cpu
