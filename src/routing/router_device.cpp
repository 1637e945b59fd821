#include "src/routing/router_device.hpp"

#include <algorithm>
#include <climits>
#include <numeric>
#include <vector>

#include "src/core/device.hpp"
#include "src/routing/load_stats.hpp"
#include "src/routing/router_checks.hpp"

#if defined(MOECOMM_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "kernels/cuda/capacity.hpp"
#include "kernels/cuda/gate.hpp"
#include "kernels/cuda/layout.hpp"
#include "kernels/cuda/scratch.hpp"
#include "kernels/cuda/stats.hpp"
#include "src/routing/capacity.hpp"
#endif

namespace moecomm {

namespace {

// The CPU router on host copies, its result copied to `device`.
Routing routeStaged(const Router& router, const TensorView& logits, const TensorView* bias,
                    ExecContext context) {
  const Tensor host_logits = copyTo(logits, Device::cpu(), context);
  Tensor host_bias;
  if (bias != nullptr) host_bias = copyTo(*bias, Device::cpu(), context);
  Routing routing = router.route(host_logits.view(), bias != nullptr ? &host_bias.view() : nullptr);
  routing.device_stats =
      copyTo(encodeLoadStats(routing.stats, static_cast<int>(logits.shape[1])).view(),
             logits.device, context);
  routing.topk_idx = copyTo(routing.topk_idx.view(), logits.device, context);
  routing.topk_weights = copyTo(routing.topk_weights.view(), logits.device, context);
  routing.selected_idx = copyTo(routing.selected_idx.view(), logits.device, context);
  return routing;
}

#if defined(MOECOMM_HAVE_CUDA)

void throwIfCuda(cudaError_t status, const char* what) {
  throwIfError(device::cudaStatus(status, what));
}

#endif

}  // namespace

Routing routeOnDeviceNoWait(const Router& router, const TensorView& logits, const TensorView* bias,
                            ExecContext context) {
  const RouterOptions& o = router.options();
  throwIfError(checkRouterShapes(o, logits, bias));
  throwIfError(device::requireDevice(logits.device.index));
  throwIfError(device::setDevice(logits.device.index));
  const int64_t tokens = logits.shape[0];
  const int experts = static_cast<int>(logits.shape[1]);
#if defined(MOECOMM_HAVE_CUDA)
  if (experts > cuda::kGateMaxExperts) return routeStaged(router, logits, bias, context);
  const int64_t capacity = expertCapacity(o, tokens, experts);
  // Rerouting ranks the gate's next-best experts after the top k (the candidates).
  const bool reroute = capacity > 0 && o.overflow == OverflowPolicy::kReroute;
  const int candidates = reroute ? o.reroute_candidates : 0;
  const int k = o.topk;
  const Device dev = logits.device;
  auto stream = static_cast<cudaStream_t>(context.stream);
  Routing routing;
  routing.topk_idx = Tensor::empty({tokens, k}, DType::kI32, dev, context);
  routing.topk_weights = Tensor::empty({tokens, k}, DType::kF32, dev, context);
  routing.selected_idx = Tensor::empty({tokens, k}, DType::kI32, dev, context);
  // Scratch is stream-ordered (cudaMallocAsync, freed with cudaFreeAsync when `scratch` goes), so
  // returning before the kernels finish neither waits (cudaFree would) nor frees memory in use.
  cuda::StreamScratch scratch(stream);
  int32_t *counts = nullptr, *bad = nullptr, *first_overflow = nullptr;
  throwIfCuda(scratch.take(static_cast<size_t>(experts), &counts), "cudaMallocAsync");
  throwIfCuda(scratch.take(1, &bad), "cudaMallocAsync");
  throwIfCuda(scratch.take(1, &first_overflow), "cudaMallocAsync");
  // Static: the copies below read it after this call may have returned.
  static const int32_t none = INT32_MAX;
  throwIfCuda(cudaMemcpyAsync(bad, &none, sizeof(none), cudaMemcpyHostToDevice, stream),
              "cudaMemcpyAsync");
  throwIfCuda(cudaMemcpyAsync(first_overflow, &none, sizeof(none), cudaMemcpyHostToDevice, stream),
              "cudaMemcpyAsync");
  const cpu::GateParams params{experts,
                               k,
                               static_cast<int>(o.score),
                               o.renormalize,
                               o.scaling_factor,
                               o.num_groups,
                               o.topk_groups,
                               candidates};
  int32_t *candidate_idx = nullptr, *reroute_load = nullptr, *reroute_counters = nullptr;
  float* candidate_weights = nullptr;
  if (reroute) {
    const auto slots = static_cast<size_t>(tokens) * static_cast<size_t>(std::max(candidates, 1));
    throwIfCuda(scratch.take(slots, &candidate_idx), "cudaMallocAsync");
    throwIfCuda(scratch.take(slots, &candidate_weights), "cudaMallocAsync");
    throwIfCuda(scratch.take(static_cast<size_t>(experts), &reroute_load), "cudaMallocAsync");
    throwIfCuda(scratch.take(2, &reroute_counters), "cudaMallocAsync");
  }
  throwIfCuda(cuda::gate(logits.as<const float>(), tokens,
                         bias != nullptr ? bias->as<const float>() : nullptr, params,
                         routing.topk_idx.as<int32_t>(), routing.topk_weights.as<float>(),
                         candidate_idx, candidate_weights, bad, stream),
              "the gate kernel");
  throwIfCuda(cudaMemcpyAsync(routing.selected_idx.data(), routing.topk_idx.data(),
                              routing.topk_idx.bytes(), cudaMemcpyDeviceToDevice, stream),
              "cudaMemcpyAsync");
  // Capacity: the drop policies on the GPU; kError only looks for the first overflow.
  if (capacity > 0) {
    cuda::Reroute moves;
    if (reroute) {
      moves = {candidate_idx, candidate_weights, candidates, k, reroute_load, reroute_counters};
    }
    throwIfCuda(cuda::applyCapacity(routing.topk_idx.as<int32_t>(),
                                    routing.topk_weights.as<float>(), tokens * k, experts, capacity,
                                    o.drop_policy == DropPolicy::kProbability,
                                    o.overflow != OverflowPolicy::kError, {counts, first_overflow},
                                    reroute ? &moves : nullptr, stream),
                "capacity");
  } else {
    throwIfCuda(
        cuda::countExperts(routing.topk_idx.as<int32_t>(), tokens * k, experts, counts, stream),
        "the expert count");
  }
  // Everything the host will want, in one vector, without waiting for it.
  routing.device_stats = Tensor::empty({deviceStatsSize(experts)}, DType::kI64, dev, context);
  cuda::StatsInputs in;
  in.demand = counts;
  in.reroute_load = reroute_load;
  in.reroute_counters = reroute_counters;
  in.bad_token = bad;
  // Capacity finds the first overflow under every policy; only kError reports it.
  in.first_overflow = o.overflow == OverflowPolicy::kError ? first_overflow : nullptr;
  in.experts = experts;
  in.capacity = capacity;
  throwIfCuda(cuda::gatherLoadStats(in, routing.device_stats.as<int64_t>(), stream),
              "the statistics kernel");
  return routing;
#else
  (void)tokens;
  (void)experts;
  return routeStaged(router, logits, bias, context);
#endif
}

}  // namespace moecomm
