// The expert MLP's elementwise activations and their derivatives, on f32 rows.
#pragma once

#include <cstdint>

namespace moecomm::cpu {

// pre [rows, 2F] holds gate columns then up columns; h [rows, F] = silu(gate) * up.
void swigluForward(const float* pre, float* h, int64_t rows, int64_t ffn);
// dpre [rows, 2F] from dh [rows, F] and the forward's pre.
void swigluBackward(const float* pre, const float* dh, float* dpre, int64_t rows, int64_t ffn);

// h = gelu(pre) = pre * Phi(pre) (the erf form), n elements.
void geluForward(const float* pre, float* h, int64_t n);
void geluBackward(const float* pre, const float* dh, float* dpre, int64_t n);

}  // namespace moecomm::cpu
