// Router::losses and Router::backward on one GPU: the per-token kernels of
// kernels/cuda/router_grad.cu on the context's stream, with the aux loss's expert fractions
// counted on the GPU (or, for the group's global load, computed here and copied).
#include <climits>
#include <vector>

#include "src/core/device.hpp"
#include "src/routing/router_grad.hpp"

#if defined(MOECOMM_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "kernels/cuda/router_grad.hpp"
#include "kernels/cuda/scratch.hpp"
#endif

namespace moecomm {

bool allOnOneGpu(std::initializer_list<const TensorView*> views) {
  int index = -1;
  for (const TensorView* v : views) {
    if (v == nullptr) continue;
    if (!v->device.isCuda() || (index >= 0 && v->device.index != index)) return false;
    index = v->device.index;
  }
  return index >= 0;
}

#if defined(MOECOMM_HAVE_CUDA)

namespace {

using device::cudaStatus;

// The aux loss's fractions [chunks, E] on the GPU, or null without aux loss.
Status auxFractionsOnDevice(const routergrad::Params& p, const Routing& routing,
                            const std::vector<int64_t>* global, cuda::StreamScratch& scratch,
                            cudaStream_t stream, double** f) {
  *f = nullptr;
  if (p.aux_coeff == 0.0 || p.tokens == 0) return Status::ok();
  const int E = p.experts;
  const int64_t chunks = routergrad::auxChunks(p);
  MOECOMM_RETURN_IF_ERROR(
      cudaStatus(scratch.take(static_cast<size_t>(chunks * E), f), "cudaMallocAsync"));
  if (global != nullptr && p.aux_seq_len <= 0) {  // one chunk, from the group's counts
    std::vector<double> host(static_cast<size_t>(E));
    double total = 0.0;
    for (int e = 0; e < E; ++e) total += host[e] = static_cast<double>((*global)[e]);
    for (double& v : host) v = total > 0 ? v / total : 0.0;
    // From pageable memory: staged before the call returns, so `host` may go.
    return cudaStatus(cudaMemcpyAsync(*f, host.data(), sizeof(double) * host.size(),
                                      cudaMemcpyHostToDevice, stream),
                      "cudaMemcpyAsync");
  }
  int32_t* counts = nullptr;
  MOECOMM_RETURN_IF_ERROR(
      cudaStatus(scratch.take(static_cast<size_t>(chunks * E), &counts), "cudaMallocAsync"));
  return cudaStatus(cuda::auxFractions(p, routing.topk_idx.as<const int32_t>(), counts, *f, stream),
                    "the aux-loss fractions kernel");
}

}  // namespace

Status lossesOnDevice(const routergrad::Params& p, const TensorView& logits, const Routing& routing,
                      const std::vector<int64_t>* global, ExecContext context, RouterLosses* out) {
  MOECOMM_RETURN_IF_ERROR(device::requireDevice(logits.device.index));
  MOECOMM_RETURN_IF_ERROR(device::setDevice(logits.device.index));
  auto stream = static_cast<cudaStream_t>(context.stream);
  const int64_t T = p.tokens;
  const bool aux = p.aux_coeff != 0.0, z = p.z_coeff != 0.0;
  std::vector<double> fq(aux ? static_cast<size_t>(T) : 0), lse(z ? static_cast<size_t>(T) : 0);
  unsigned long long bad_row = ULLONG_MAX;
  {
    cuda::StreamScratch scratch(stream);
    double* f = nullptr;
    MOECOMM_RETURN_IF_ERROR(auxFractionsOnDevice(p, routing, global, scratch, stream, &f));
    double *d_scratch = nullptr, *d_fq = nullptr, *d_lse = nullptr;
    unsigned long long* d_bad = nullptr;
    MOECOMM_RETURN_IF_ERROR(
        cudaStatus(scratch.take(static_cast<size_t>(cuda::routerGradScratch(p)), &d_scratch),
                   "cudaMallocAsync"));
    if (aux) {
      MOECOMM_RETURN_IF_ERROR(
          cudaStatus(scratch.take(static_cast<size_t>(T), &d_fq), "cudaMallocAsync"));
    }
    if (z) {
      MOECOMM_RETURN_IF_ERROR(
          cudaStatus(scratch.take(static_cast<size_t>(T), &d_lse), "cudaMallocAsync"));
    }
    MOECOMM_RETURN_IF_ERROR(cudaStatus(scratch.take(1, &d_bad), "cudaMallocAsync"));
    // All ones: ULLONG_MAX, "no bad row".
    MOECOMM_RETURN_IF_ERROR(
        cudaStatus(cudaMemsetAsync(d_bad, 0xff, sizeof(*d_bad), stream), "cudaMemsetAsync"));
    MOECOMM_RETURN_IF_ERROR(cudaStatus(cuda::routerLossTerms(p, logits.as<const float>(), f,
                                                             d_scratch, d_fq, d_lse, d_bad, stream),
                                       "the router loss kernel"));
    if (aux) {
      MOECOMM_RETURN_IF_ERROR(
          cudaStatus(cudaMemcpyAsync(fq.data(), d_fq, sizeof(double) * fq.size(),
                                     cudaMemcpyDeviceToHost, stream),
                     "cudaMemcpyAsync"));
    }
    if (z) {
      MOECOMM_RETURN_IF_ERROR(
          cudaStatus(cudaMemcpyAsync(lse.data(), d_lse, sizeof(double) * lse.size(),
                                     cudaMemcpyDeviceToHost, stream),
                     "cudaMemcpyAsync"));
    }
    MOECOMM_RETURN_IF_ERROR(cudaStatus(
        cudaMemcpyAsync(&bad_row, d_bad, sizeof(bad_row), cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync"));
    MOECOMM_RETURN_IF_ERROR(cudaStatus(cudaStreamSynchronize(stream), "cudaStreamSynchronize"));
  }
  if (bad_row != ULLONG_MAX) {
    return makeError(StatusCode::kInvalidArgument,
                     "logits row {} holds a non-finite value; the router takes finite logits only "
                     "(check the gate's input for overflow)",
                     bad_row);
  }
  *out = sumLosses(p, fq, lse);
  return Status::ok();
}

Status backwardOnDevice(const routergrad::Params& p, const TensorView& logits,
                        const Routing& routing, const TensorView* grad_weights,
                        const std::vector<int64_t>* global, const TensorView& grad_logits,
                        ExecContext context) {
  MOECOMM_RETURN_IF_ERROR(device::requireDevice(logits.device.index));
  if (p.tokens == 0) return Status::ok();
  MOECOMM_RETURN_IF_ERROR(device::setDevice(logits.device.index));
  auto stream = static_cast<cudaStream_t>(context.stream);
  cuda::StreamScratch scratch(stream);
  double* f = nullptr;
  MOECOMM_RETURN_IF_ERROR(auxFractionsOnDevice(p, routing, global, scratch, stream, &f));
  double* d_scratch = nullptr;
  MOECOMM_RETURN_IF_ERROR(
      cudaStatus(scratch.take(static_cast<size_t>(cuda::routerGradScratch(p)), &d_scratch),
                 "cudaMallocAsync"));
  return cudaStatus(
      cuda::routerGrad(p, logits.as<const float>(), routing.topk_idx.as<const int32_t>(),
                       routing.selected_idx.as<const int32_t>(),
                       grad_weights != nullptr ? grad_weights->as<const float>() : nullptr, f,
                       d_scratch, grad_logits.as<float>(), stream),
      "the router backward kernel");
}

#else

Status lossesOnDevice(const routergrad::Params&, const TensorView& logits, const Routing&,
                      const std::vector<int64_t>*, ExecContext, RouterLosses*) {
  return device::requireDevice(logits.device.index);  // says this build has no CUDA
}

Status backwardOnDevice(const routergrad::Params&, const TensorView& logits, const Routing&,
                        const TensorView*, const std::vector<int64_t>*, const TensorView&,
                        ExecContext) {
  return device::requireDevice(logits.device.index);
}

#endif

}  // namespace moecomm
