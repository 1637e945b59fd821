// Dense f32 GEMM on host memory through BLAS (OpenBLAS), row-major.
#pragma once

#include <cstdint>

namespace moecomm::cpu {

// C[M, N] = alpha * op(A) * op(B) + beta * C, row-major; op(X) is X or X^T.
// lda/ldb/ldc are the row strides of A, B and C as stored.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Threads BLAS may use for one call (global to the process, as OpenBLAS's own setting is).
void setGemmThreads(int threads);
int gemmThreads();

}  // namespace moecomm::cpu
