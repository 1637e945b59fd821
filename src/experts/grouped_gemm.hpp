// The grouped GEMM behind the public groupedGemm, returning a status for callers inside the
// library.
#pragma once

#include <vector>

#include "moecomm/experts.hpp"
#include "src/core/status.hpp"

namespace moecomm {

// Shapes, dtypes, devices (all host, or all `cuda`) and the expert layout.
Status checkGroupedGemm(GemmForm form, const TensorView& a, const TensorView& b,
                        const TensorView& c, const std::vector<int64_t>& counts,
                        const std::vector<int64_t>& offsets, float beta, bool cuda);

// CUDA operands through cuBLAS on the context's stream (src/experts/grouped_gemm_cuda.cpp).
Status runGroupedGemmCuda(GemmForm form, const TensorView& a, const TensorView& b,
                          const TensorView& c, const std::vector<int64_t>& counts,
                          const std::vector<int64_t>& offsets, float beta, ExecContext context);

// Host operands through BLAS.
Status runGroupedGemmHost(GemmForm form, const TensorView& a, const TensorView& b,
                          const TensorView& c, const std::vector<int64_t>& counts,
                          const std::vector<int64_t>& offsets, float beta);

// Either of the two, by A's device.
Status runGroupedGemm(GemmForm form, const TensorView& a, const TensorView& b, const TensorView& c,
                      const std::vector<int64_t>& counts, const std::vector<int64_t>& offsets,
                      float beta, ExecContext context);

// MOECOMM_GEMM_THREADS, else this machine's cores shared among the ranks on this host, so that
// ranks running BLAS at once do not oversubscribe the cores.
int defaultGemmThreads(int ranks_on_host);

}  // namespace moecomm
