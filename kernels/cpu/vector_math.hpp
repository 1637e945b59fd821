// Elementwise exp and sigmoid over arrays of floats, vectorized.
#pragma once

namespace moecomm::cpu {

void expShifted(const float* in, float shift, float* out, int n);  // out = exp(in - shift)
// out = 1 / (1 + exp(-in)) + bias (bias may be null). Returns whether every input was finite
// (checked in the same pass; the outputs are meaningless when not).
bool sigmoid(const float* in, const float* bias, float* out, int n);

}  // namespace moecomm::cpu
