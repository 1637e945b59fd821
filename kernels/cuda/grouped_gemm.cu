#include <cublas_api.h>

#include "kernels/cuda/grouped_gemm.hpp"

namespace moecomm::cuda {

namespace {

// Row-major Y = X W is column-major Y^T = W^T X^T: cuBLAS gets (n, m, k) with W first.
cublasStatus_t perExpert(cublasHandle_t handle, const void* x, const std::vector<int64_t>& offsets,
                         int64_t k, int64_t n, const void* w, void* y) {
  const float alpha = 1.0f;
  const float beta = 0.0f;
  const auto* xb = static_cast<const char*>(x);
  const auto* wb = static_cast<const char*>(w);
  auto* yb = static_cast<char*>(y);
  for (size_t e = 0; e + 1 < offsets.size(); ++e) {
    const int64_t m = offsets[e + 1] - offsets[e];
    if (m == 0) continue;
    const cublasStatus_t status =
        cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                     static_cast<int>(k), &alpha, wb + static_cast<int64_t>(e) * k * n * 2,
                     CUDA_R_16BF, static_cast<int>(n), xb + offsets[e] * k * 2, CUDA_R_16BF,
                     static_cast<int>(k), &beta, yb + offsets[e] * n * 2, CUDA_R_16BF,
                     static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t grouped(cublasHandle_t handle, const void* x, const std::vector<int64_t>& offsets,
                       int64_t k, int64_t n, const void* w, void* y, cudaStream_t stream) {
  std::vector<cublasOperation_t> ops;
  std::vector<int> ms, ns, ks, sizes;
  std::vector<float> alphas, betas;
  std::vector<const void*> a_host, b_host;
  std::vector<void*> c_host;
  for (size_t e = 0; e + 1 < offsets.size(); ++e) {
    const int64_t m = offsets[e + 1] - offsets[e];
    if (m == 0) continue;
    ops.push_back(CUBLAS_OP_N);
    ns.push_back(static_cast<int>(n));
    ms.push_back(static_cast<int>(m));
    ks.push_back(static_cast<int>(k));
    sizes.push_back(1);
    alphas.push_back(1.0f);
    betas.push_back(0.0f);
    a_host.push_back(static_cast<const char*>(w) + static_cast<int64_t>(e) * k * n * 2);
    b_host.push_back(static_cast<const char*>(x) + offsets[e] * k * 2);
    c_host.push_back(static_cast<char*>(y) + offsets[e] * n * 2);
  }
  const int groups = static_cast<int>(ops.size());
  if (groups == 0) return CUBLAS_STATUS_SUCCESS;
  // The pointer arrays live on the device, stream-ordered like the call that reads them.
  void** arrays = nullptr;
  if (cudaMallocAsync(reinterpret_cast<void**>(&arrays), sizeof(void*) * 3 * groups, stream) !=
      cudaSuccess) {
    return CUBLAS_STATUS_ALLOC_FAILED;
  }
  std::vector<const void*> all(a_host);
  all.insert(all.end(), b_host.begin(), b_host.end());
  all.insert(all.end(), c_host.begin(), c_host.end());
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  if (cudaMemcpyAsync(arrays, all.data(), sizeof(void*) * all.size(), cudaMemcpyHostToDevice,
                      stream) != cudaSuccess ||
      cudaStreamSynchronize(stream) != cudaSuccess) {  // `all` must outlive the copy
    status = CUBLAS_STATUS_INTERNAL_ERROR;
  } else {
    status = cublasGemmGroupedBatchedEx(
        handle, ops.data(), ops.data(), ns.data(), ms.data(), ks.data(), alphas.data(),
        const_cast<const void* const*>(arrays), CUDA_R_16BF, ns.data(),
        const_cast<const void* const*>(arrays + groups), CUDA_R_16BF, ks.data(), betas.data(),
        arrays + 2 * groups, CUDA_R_16BF, ns.data(), groups, sizes.data(), CUBLAS_COMPUTE_32F);
  }
  cudaFreeAsync(arrays, stream);
  return status;
}

}  // namespace

cublasStatus_t groupedGemmBf16(cublasHandle_t handle, const void* x,
                               const std::vector<int64_t>& offsets, int64_t k, int64_t n,
                               const void* w, void* y, cudaStream_t stream, GemmPath* path) {
  cublasStatus_t status = cublasSetStream(handle, stream);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  status = grouped(handle, x, offsets, k, n, w, y, stream);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE) {
    if (path != nullptr) *path = GemmPath::kPerExpert;
    return perExpert(handle, x, offsets, k, n, w, y);
  }
  if (path != nullptr) *path = GemmPath::kGrouped;
  return status;
}

}  // namespace moecomm::cuda
