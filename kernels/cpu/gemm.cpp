#include "kernels/cpu/gemm.hpp"

#if defined(MOECOMM_HAVE_OPENBLAS)
#include <cblas.h>
#else
#include <atomic>
#include <cstdio>
#endif

namespace moecomm::cpu {

#if defined(MOECOMM_HAVE_OPENBLAS)

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m), static_cast<blasint>(n),
              static_cast<blasint>(k), alpha, a, static_cast<blasint>(lda), b,
              static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

void setGemmThreads(int threads) {
  openblas_set_num_threads(threads < 1 ? 1 : threads);
}

int gemmThreads() {
  return openblas_get_num_threads();
}

#else

// Built without OpenBLAS (a GPU-only machine): correct, single-threaded and slow. Said once on
// stderr so that nobody mistakes its speed for the library's.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {
    std::fprintf(stderr, "moecomm: built without OpenBLAS; CPU GEMMs use a reference loop\n");
  }
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        const float av = trans_a ? a[p * lda + i] : a[i * lda + p];
        const float bv = trans_b ? b[j * ldb + p] : b[p * ldb + j];
        sum += static_cast<double>(av) * bv;
      }
      float& out = c[i * ldc + j];
      out = alpha * static_cast<float>(sum) + (beta == 0.0f ? 0.0f : beta * out);
    }
  }
}

void setGemmThreads(int) {}

int gemmThreads() {
  return 1;
}

#endif

}  // namespace moecomm::cpu
