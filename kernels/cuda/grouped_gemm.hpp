// Expert GEMMs over the expert-major layout through cuBLAS: bf16 inputs and outputs, f32
// accumulation. One grouped call (cublasGemmGroupedBatchedEx) where this cuBLAS supports it for
// bf16, else one cublasGemmEx per expert on the same stream.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

namespace moecomm::cuda {

enum class GemmPath : int { kGrouped = 0, kPerExpert = 1 };

// y[rows of expert e, n] = x[rows of expert e, k] * w[e] ([k, n], row-major) for every expert e,
// rows [offsets[e], offsets[e + 1]) (host offsets, as dispatch's counts are known on the host).
// Zero-row experts cost nothing. The handle's stream is set to `stream`. *path says which ran.
cublasStatus_t groupedGemmBf16(cublasHandle_t handle, const void* x,
                               const std::vector<int64_t>& offsets, int64_t k, int64_t n,
                               const void* w, void* y, cudaStream_t stream, GemmPath* path);

}  // namespace moecomm::cuda
