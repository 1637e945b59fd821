#include "kernels/cuda/router_grad.hpp"
#include "kernels/cuda/rows.cuh"

namespace moecomm::cuda {

namespace {

constexpr int kTokenThreads = 128;
// Threads of the per-token kernels, at most; each holds 2E doubles of scratch.
constexpr int64_t kMaxThreads = 8192;

__device__ inline int64_t threadIndex() {
  return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
}

int64_t tokenThreads(const routergrad::Params& p) {
  return p.tokens < kMaxThreads ? p.tokens : kMaxThreads;
}

__global__ void countKeptKernel(const int32_t* idx, int64_t slots, int k, int E, int64_t len,
                                int32_t* counts) {
  for (int64_t a = threadIndex(); a < slots; a += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t e = idx[a];
    if (e >= 0 && e < E) atomicAdd(&counts[(a / k) / len * E + e], 1);
  }
}

// As the host: the total is an exact integer, each fraction one division.
__global__ void fractionsKernel(const int32_t* counts, int64_t chunks, int E, double* f) {
  for (int64_t c = threadIndex(); c < chunks; c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t total = 0;
    for (int e = 0; e < E; ++e) total += counts[c * E + e];
    for (int e = 0; e < E; ++e) {
      f[c * E + e] =
          total > 0 ? static_cast<double>(counts[c * E + e]) / static_cast<double>(total) : 0.0;
    }
  }
}

__global__ void gradKernel(routergrad::Params p, const float* logits, const int32_t* idx,
                           const int32_t* selected, const float* grad_w, const double* f,
                           double* scratch, int64_t threads, float* out) {
  const int64_t tid = threadIndex();
  if (tid >= threads) return;
  const int E = p.experts, k = p.topk;
  const int64_t len = routergrad::auxChunkLength(p);
  for (int64_t t = tid; t < p.tokens; t += threads) {
    routergrad::tokenGrad(p, t, logits + t * E, idx + t * k, selected + t * k,
                          grad_w != nullptr ? grad_w + t * k : nullptr,
                          f != nullptr ? f + (t / len) * E : nullptr, {scratch + tid, threads},
                          out + t * E);
  }
}

__global__ void lossTermsKernel(routergrad::Params p, const float* logits, const double* f,
                                double* scratch, int64_t threads, double* fq, double* lse,
                                unsigned long long* bad_row) {
  const int64_t tid = threadIndex();
  if (tid >= threads) return;
  const int E = p.experts;
  const int64_t len = routergrad::auxChunkLength(p);
  for (int64_t t = tid; t < p.tokens; t += threads) {
    const float* row = logits + t * E;
    bool finite = true;
    for (int e = 0; e < E; ++e) finite = finite && isfinite(row[e]);
    if (!finite) atomicMin(bad_row, static_cast<unsigned long long>(t));
    routergrad::tokenLossTerms(p, row, f != nullptr ? f + (t / len) * E : nullptr,
                               {scratch + tid, threads}, fq != nullptr ? fq + t : nullptr,
                               lse != nullptr ? lse + t : nullptr);
  }
}

int tokenBlocks(int64_t threads) {
  return static_cast<int>((threads + kTokenThreads - 1) / kTokenThreads);
}

}  // namespace

cudaError_t auxFractions(const routergrad::Params& p, const int32_t* idx, int32_t* counts,
                         double* f, cudaStream_t stream) {
  const int64_t chunks = routergrad::auxChunks(p);
  if (chunks == 0) return cudaSuccess;
  const int E = p.experts;
  cudaError_t status = cudaMemsetAsync(counts, 0, sizeof(int32_t) * chunks * E, stream);
  if (status != cudaSuccess) return status;
  const int64_t slots = p.tokens * p.topk;
  if (slots > 0) {
    countKeptKernel<<<blocksFor(slots), kThreads, 0, stream>>>(
        idx, slots, p.topk, E, routergrad::auxChunkLength(p), counts);
    status = cudaGetLastError();
    if (status != cudaSuccess) return status;
  }
  fractionsKernel<<<blocksFor(chunks), kThreads, 0, stream>>>(counts, chunks, E, f);
  return cudaGetLastError();
}

int64_t routerGradScratch(const routergrad::Params& p) {
  return 2 * static_cast<int64_t>(p.experts) * tokenThreads(p);
}

cudaError_t routerGrad(const routergrad::Params& p, const float* logits, const int32_t* idx,
                       const int32_t* selected, const float* grad_w, const double* f,
                       double* scratch, float* out, cudaStream_t stream) {
  const int64_t threads = tokenThreads(p);
  if (threads == 0) return cudaSuccess;
  gradKernel<<<tokenBlocks(threads), kTokenThreads, 0, stream>>>(p, logits, idx, selected, grad_w,
                                                                 f, scratch, threads, out);
  return cudaGetLastError();
}

cudaError_t routerLossTerms(const routergrad::Params& p, const float* logits, const double* f,
                            double* scratch, double* fq, double* lse, unsigned long long* bad_row,
                            cudaStream_t stream) {
  const int64_t threads = tokenThreads(p);
  if (threads == 0) return cudaSuccess;
  lossTermsKernel<<<tokenBlocks(threads), kTokenThreads, 0, stream>>>(p, logits, f, scratch,
                                                                      threads, fq, lse, bad_row);
  return cudaGetLastError();
}

}  // namespace moecomm::cuda
