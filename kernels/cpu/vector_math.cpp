// Built with -ffast-math, alone in this file, so GCC calls libmvec's vector expf. Inputs are finite
// (the router checks logits first); nothing here compares against infinity or NaN.
#include "kernels/cpu/vector_math.hpp"

#include <cmath>

namespace moecomm::cpu {

// An AVX2 clone (8-wide libmvec expf) beside the baseline SSE one, picked at load time by the
// CPU's features, so the binary still runs on any x86-64.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define MOECOMM_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MOECOMM_VECTOR_CLONES
#endif

MOECOMM_VECTOR_CLONES
void expShifted(const float* in, float shift, float* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = std::exp(in[i] - shift);
}

MOECOMM_VECTOR_CLONES
void sigmoid(const float* in, float* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = 1.0f / (1.0f + std::exp(-in[i]));
}

}  // namespace moecomm::cpu
