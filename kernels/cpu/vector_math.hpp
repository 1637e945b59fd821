// Elementwise exp and sigmoid over arrays of finite floats, vectorized through glibc's libmvec.
#pragma once

namespace moecomm::cpu {

void expShifted(const float* in, float shift, float* out, int n);  // out = exp(in - shift)
void sigmoid(const float* in, float* out, int n);                  // out = 1 / (1 + exp(-in))

}  // namespace moecomm::cpu
