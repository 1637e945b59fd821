// Elementwise work of the expert MLP and the MoE layer on the GPU: the activations and their
// derivatives (the formulas of kernels/cpu/activations.cpp), dtype conversions and an in-place
// sum. Grid-stride loops over f32 elements, ordered on the caller's stream.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/combine.hpp"

namespace moecomm::cuda {

// pre [rows, 2F] holds gate columns then up columns; h [rows, F] = silu(gate) * up.
cudaError_t swigluForward(const float* pre, float* h, int64_t rows, int64_t ffn,
                          cudaStream_t stream);
// dpre [rows, 2F] from dh [rows, F] and the forward's pre.
cudaError_t swigluBackward(const float* pre, const float* dh, float* dpre, int64_t rows,
                           int64_t ffn, cudaStream_t stream);
// h = pre * Phi(pre) (the erf form) over n elements, and its derivative times dh.
cudaError_t geluForward(const float* pre, float* h, int64_t n, cudaStream_t stream);
cudaError_t geluBackward(const float* pre, const float* dh, float* dpre, int64_t n,
                         cudaStream_t stream);

// n elements of `type` to f32, and f32 to `type` (bf16 rounds to nearest even, as on the CPU).
cudaError_t toF32(const void* src, RowType type, float* dst, int64_t n, cudaStream_t stream);
cudaError_t fromF32(const float* src, void* dst, RowType type, int64_t n, cudaStream_t stream);

// y[i] += x[i] over n f32 elements.
cudaError_t addInto(float* y, const float* x, int64_t n, cudaStream_t stream);

}  // namespace moecomm::cuda
