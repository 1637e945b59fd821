#include "kernels/cpu/activations.hpp"

#include <cmath>

namespace moecomm::cpu {

namespace {
float sigmoid(float x) {
  return 1.0f / (1.0f + std::exp(-x));
}
}  // namespace

void swigluForward(const float* pre, float* h, int64_t rows, int64_t ffn) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = pre + r * 2 * ffn;
    const float* up = gate + ffn;
    float* out = h + r * ffn;
    for (int64_t i = 0; i < ffn; ++i) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
  }
}

void swigluBackward(const float* pre, const float* dh, float* dpre, int64_t rows, int64_t ffn) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = pre + r * 2 * ffn;
    const float* up = gate + ffn;
    const float* d = dh + r * ffn;
    float* dgate = dpre + r * 2 * ffn;
    float* dup = dgate + ffn;
    for (int64_t i = 0; i < ffn; ++i) {
      const float s = sigmoid(gate[i]);
      const float silu = gate[i] * s;
      dup[i] = d[i] * silu;
      dgate[i] = d[i] * up[i] * s * (1.0f + gate[i] * (1.0f - s));  // d silu / d gate
    }
  }
}

void geluForward(const float* pre, float* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = 0.5f * pre[i] * (1.0f + std::erf(pre[i] * M_SQRT1_2));
}

void geluBackward(const float* pre, const float* dh, float* dpre, int64_t n) {
  const float inv_sqrt_2pi = 0.3989422804014327f;
  for (int64_t i = 0; i < n; ++i) {
    const float x = pre[i];
    const float cdf = 0.5f * (1.0f + std::erf(x * static_cast<float>(M_SQRT1_2)));
    dpre[i] = dh[i] * (cdf + x * inv_sqrt_2pi * std::exp(-0.5f * x * x));
  }
}

}  // namespace moecomm::cpu
