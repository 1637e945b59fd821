#include <cublas_api.h>

#include <array>
#include <cstring>
#include <map>

#include "kernels/cuda/grouped_gemm.hpp"

namespace moecomm::cuda {

namespace {

size_t typeBytes(cudaDataType_t type) {
  return type == CUDA_R_32F ? 4 : 2;
}

// One expert's product. Row-major X is column-major X^T, so each form maps onto cuBLAS with the
// operands swapped (docs/cuda.md has the derivation).
cublasStatus_t oneExpert(cublasHandle_t handle, const GroupedGemmArgs& g, size_t e) {
  const int64_t m = g.rows[e];
  const int64_t first = g.first[e];
  const size_t ab = typeBytes(g.ab_type);
  const size_t cb = typeBytes(g.c_type);
  const auto* a = static_cast<const char*>(g.a);
  const auto* b = static_cast<const char*>(g.b);
  auto* c = static_cast<char*>(g.c);
  const float one = 1.0f;
  const float zero = 0.0f;
  const int K = static_cast<int>(g.k);
  const int N = static_cast<int>(g.n);
  const int M = static_cast<int>(m);
  const auto ei = static_cast<int64_t>(e);
  switch (g.op) {
    case GemmOp::kNN:
      return cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &one, b + ei * g.k * g.n * ab,
                          g.ab_type, N, a + first * g.k * ab, g.ab_type, K, &zero,
                          c + first * g.n * cb, g.c_type, N, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT);
    case GemmOp::kNT:
      return cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, K, M, N, &one, b + ei * g.k * g.n * ab,
                          g.ab_type, N, a + first * g.n * ab, g.ab_type, N, &zero,
                          c + first * g.k * cb, g.c_type, K, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT);
    case GemmOp::kTN:
      if (m == 0) {  // C_e = beta * C_e
        if (g.beta == 1.0f) return CUBLAS_STATUS_SUCCESS;
        return cublasScalEx(handle, static_cast<int>(g.k * g.n), &g.beta, CUDA_R_32F,
                            c + ei * g.k * g.n * cb, g.c_type, 1, CUDA_R_32F);
      }
      return cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, N, K, M, &one, b + first * g.n * ab,
                          g.ab_type, N, a + first * g.k * ab, g.ab_type, K, &g.beta,
                          c + ei * g.k * g.n * cb, g.c_type, N, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT);
  }
  return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t perExpert(cublasHandle_t handle, const GroupedGemmArgs& g) {
  for (size_t e = 0; e < g.rows.size(); ++e) {
    if (g.rows[e] == 0 && g.op != GemmOp::kTN) continue;
    const cublasStatus_t status = oneExpert(handle, g, e);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
  }
  return CUBLAS_STATUS_SUCCESS;
}

// Host staging for the grouped call's pointer arrays without a host wait: a ring of pinned slots
// per device and thread, each reused only after the event of its last copy (normally long done).
class PointerRing {
 public:
  ~PointerRing() {
    for (Slot& s : slots_) {
      if (s.event != nullptr) cudaEventDestroy(s.event);
      if (s.host != nullptr) cudaFreeHost(s.host);
    }
  }
  // Copies `bytes` from `src` to `dst` on `stream` through a pinned slot.
  cudaError_t copy(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
    Slot& s = slots_[next_++ % slots_.size()];
    if (s.event == nullptr) {
      const cudaError_t status = cudaEventCreateWithFlags(&s.event, cudaEventDisableTiming);
      if (status != cudaSuccess) return status;
    }
    cudaError_t status = cudaEventSynchronize(s.event);
    if (status != cudaSuccess) return status;
    if (s.capacity < bytes) {
      if (s.host != nullptr) cudaFreeHost(s.host);
      s.host = nullptr;
      s.capacity = 0;
      status = cudaMallocHost(&s.host, bytes);
      if (status != cudaSuccess) return status;
      s.capacity = bytes;
    }
    std::memcpy(s.host, src, bytes);
    status = cudaMemcpyAsync(dst, s.host, bytes, cudaMemcpyHostToDevice, stream);
    if (status != cudaSuccess) return status;
    return cudaEventRecord(s.event, stream);
  }

 private:
  struct Slot {
    void* host = nullptr;
    size_t capacity = 0;
    cudaEvent_t event = nullptr;
  };
  std::array<Slot, 8> slots_{};
  size_t next_ = 0;
};

cudaError_t copyPointers(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  int device = 0;
  const cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) return status;
  thread_local std::map<int, PointerRing> rings;
  return rings[device].copy(dst, src, bytes, stream);
}

// The forward form as one cublasGemmGroupedBatchedEx call: one group per non-empty expert.
cublasStatus_t groupedForward(cublasHandle_t handle, const GroupedGemmArgs& g,
                              cudaStream_t stream) {
  std::vector<cublasOperation_t> ops;
  std::vector<int> ms, ns, ks, sizes;
  std::vector<float> alphas, betas;
  std::vector<const void*> pointers;  // A operands (the weights), then B (the rows), then C
  std::vector<const void*> b_ptrs;
  std::vector<const void*> c_ptrs;
  const size_t ab = typeBytes(g.ab_type);
  const size_t cb = typeBytes(g.c_type);
  for (size_t e = 0; e < g.rows.size(); ++e) {
    if (g.rows[e] == 0) continue;
    ops.push_back(CUBLAS_OP_N);
    ns.push_back(static_cast<int>(g.n));
    ms.push_back(static_cast<int>(g.rows[e]));
    ks.push_back(static_cast<int>(g.k));
    sizes.push_back(1);
    alphas.push_back(1.0f);
    betas.push_back(0.0f);
    pointers.push_back(static_cast<const char*>(g.b) + static_cast<int64_t>(e) * g.k * g.n * ab);
    b_ptrs.push_back(static_cast<const char*>(g.a) + g.first[e] * g.k * ab);
    c_ptrs.push_back(static_cast<const char*>(g.c) + g.first[e] * g.n * cb);
  }
  const int groups = static_cast<int>(ops.size());
  if (groups == 0) return CUBLAS_STATUS_SUCCESS;
  pointers.insert(pointers.end(), b_ptrs.begin(), b_ptrs.end());
  pointers.insert(pointers.end(), c_ptrs.begin(), c_ptrs.end());
  // The pointer arrays live on the device, stream-ordered like the call that reads them.
  void** arrays = nullptr;
  if (cudaMallocAsync(reinterpret_cast<void**>(&arrays), sizeof(void*) * pointers.size(), stream) !=
      cudaSuccess) {
    return CUBLAS_STATUS_ALLOC_FAILED;
  }
  cublasStatus_t status = CUBLAS_STATUS_INTERNAL_ERROR;
  if (copyPointers(arrays, pointers.data(), sizeof(void*) * pointers.size(), stream) ==
      cudaSuccess) {
    status = cublasGemmGroupedBatchedEx(
        handle, ops.data(), ops.data(), ns.data(), ms.data(), ks.data(), alphas.data(),
        const_cast<const void* const*>(arrays), g.ab_type, ns.data(),
        const_cast<const void* const*>(arrays + groups), g.ab_type, ks.data(), betas.data(),
        arrays + 2 * groups, g.c_type, ns.data(), groups, sizes.data(), CUBLAS_COMPUTE_32F);
  }
  cudaFreeAsync(arrays, stream);
  return status;
}

}  // namespace

cublasStatus_t groupedGemm(cublasHandle_t handle, const GroupedGemmArgs& args, cudaStream_t stream,
                           GemmPath* path) {
  if (args.first.size() != args.rows.size() || args.k < 0 || args.n < 0) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  cublasStatus_t status = cublasSetStream(handle, stream);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  if (path != nullptr) *path = GemmPath::kPerExpert;
  if (args.op == GemmOp::kNN && args.ab_type == CUDA_R_16BF) {
    status = groupedForward(handle, args, stream);
    if (status != CUBLAS_STATUS_NOT_SUPPORTED && status != CUBLAS_STATUS_INVALID_VALUE) {
      if (path != nullptr) *path = GemmPath::kGrouped;
      return status;
    }
  }
  return perExpert(handle, args);
}

cublasStatus_t groupedGemmBf16(cublasHandle_t handle, const void* x,
                               const std::vector<int64_t>& offsets, int64_t k, int64_t n,
                               const void* w, void* y, cudaStream_t stream, GemmPath* path) {
  GroupedGemmArgs args;
  args.a = x;
  args.b = w;
  args.c = y;
  args.k = k;
  args.n = n;
  for (size_t e = 0; e + 1 < offsets.size(); ++e) {
    args.first.push_back(offsets[e]);
    args.rows.push_back(offsets[e + 1] - offsets[e]);
  }
  return groupedGemm(handle, args, stream, path);
}

}  // namespace moecomm::cuda
