// exp and sigmoid loops for any CPU: vector_math.cpp's fallback where AVX2 and FMA are missing.
#pragma once

namespace moecomm::cpu {

void expShiftedPortable(const float* in, float shift, float* out, int n);
// As sigmoid() in vector_math.hpp, without the finiteness check (the caller's).
void sigmoidPortable(const float* in, const float* bias, float* out, int n);

}  // namespace moecomm::cpu
