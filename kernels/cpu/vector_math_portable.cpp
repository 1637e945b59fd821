// The portable exp and sigmoid loops, built with -ffast-math: that is what makes GCC call glibc's
// libmvec vector expf for them. Nothing here compares floats against infinity or NaN.
#include "kernels/cpu/vector_math_portable.hpp"

#include <algorithm>
#include <cmath>

namespace moecomm::cpu {

void expShiftedPortable(const float* in, float shift, float* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = std::exp(in[i] - shift);
}

void sigmoidPortable(const float* in, const float* bias, float* out, int n) {
  // The finiteness check is the caller's here: -ffast-math would fold a float one away.
  // exp's argument capped below overflow: 1 / (1 + inf) becomes NaN through -ffast-math's
  // reciprocal estimate, where the cap gives 0 (as it should, to within 1e-38).
  for (int i = 0; i < n; ++i) {
    const float s = 1.0f / (1.0f + std::exp(std::min(-in[i], 88.0f)));
    out[i] = bias != nullptr ? s + bias[i] : s;
  }
}

}  // namespace moecomm::cpu
