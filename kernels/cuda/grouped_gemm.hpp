// Expert GEMMs over the expert-major layout through cuBLAS, f32 accumulation. The forward form
// with bf16 operands runs as one grouped call (cublasGemmGroupedBatchedEx) where this cuBLAS
// supports it, every other case as one cublasGemmEx per expert on the same stream.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

namespace moecomm::cuda {

enum class GemmPath : int { kGrouped = 0, kPerExpert = 1 };

// The forms of moecomm::GemmForm, row-major, with B's per-expert block [K, N]:
//   kNN: C[rows_e, N] = A[rows_e, K] * B_e            A [R, K], B [E, K, N], C [R, N]
//   kNT: C[rows_e, K] = A[rows_e, N] * B_e^T          A [R, N], B [E, K, N], C [R, K]
//   kTN: C_e = beta * C_e + A[rows_e, K]^T * B[rows_e, N]   A [R, K], B [R, N], C [E, K, N]
enum class GemmOp : int { kNN = 0, kNT = 1, kTN = 2 };

struct GroupedGemmArgs {
  GemmOp op = GemmOp::kNN;
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr;
  cudaDataType_t ab_type = CUDA_R_16BF;  // A and B share one type (cuBLAS's rule)
  cudaDataType_t c_type = CUDA_R_16BF;
  int64_t k = 0;
  int64_t n = 0;
  std::vector<int64_t> first;  // per expert: its first row
  std::vector<int64_t> rows;   // per expert: its rows (0 costs nothing; kTN scales C_e by beta)
  float beta = 0.0f;           // kTN only
};

// The handle's stream is set to `stream`. *path (may be null) says which way ran.
cublasStatus_t groupedGemm(cublasHandle_t handle, const GroupedGemmArgs& args, cudaStream_t stream,
                           GemmPath* path);

// The forward form in bf16: y[rows of expert e, n] = x[rows of e, k] * w[e] for rows
// [offsets[e], offsets[e + 1]).
cublasStatus_t groupedGemmBf16(cublasHandle_t handle, const void* x,
                               const std::vector<int64_t>& offsets, int64_t k, int64_t n,
                               const void* w, void* y, cudaStream_t stream, GemmPath* path);

}  // namespace moecomm::cuda
