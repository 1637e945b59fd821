// Built with -ffast-math, alone in this file, so GCC calls libmvec's vector expf. Inputs are finite
// (the router checks logits first); nothing here compares against infinity or NaN.
#include "kernels/cpu/vector_math.hpp"

#include "kernels/cpu/vector_clones.hpp"

#include <cmath>

namespace moecomm::cpu {

MOECOMM_VECTOR_CLONES
void expShifted(const float* in, float shift, float* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = std::exp(in[i] - shift);
}

MOECOMM_VECTOR_CLONES
void sigmoid(const float* in, float* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = 1.0f / (1.0f + std::exp(-in[i]));
}

}  // namespace moecomm::cpu
