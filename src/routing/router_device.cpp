#include "src/routing/router_device.hpp"

#include <algorithm>
#include <climits>
#include <numeric>
#include <vector>

#include "src/core/device.hpp"
#include "src/routing/router_checks.hpp"

#if defined(MOECOMM_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "kernels/cuda/capacity.hpp"
#include "kernels/cuda/gate.hpp"
#include "kernels/cuda/layout.hpp"
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
  routing.topk_idx = copyTo(routing.topk_idx.view(), logits.device, context);
  routing.topk_weights = copyTo(routing.topk_weights.view(), logits.device, context);
  routing.selected_idx = copyTo(routing.selected_idx.view(), logits.device, context);
  return routing;
}

#if defined(MOECOMM_HAVE_CUDA)

void throwIfCuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw Error(StatusCode::kSystemError,
                text::format("{} failed on the GPU: {}", what, cudaGetErrorString(status)));
  }
}

#endif

}  // namespace

Routing routeOnDevice(const Router& router, const TensorView& logits, const TensorView* bias,
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
  routing.topk_idx = Tensor::empty({tokens, k}, DType::kI32, dev);
  routing.topk_weights = Tensor::empty({tokens, k}, DType::kF32, dev);
  routing.selected_idx = Tensor::empty({tokens, k}, DType::kI32, dev);
  Tensor counts = Tensor::empty({experts}, DType::kI32, dev);
  Tensor bad = Tensor::empty({1}, DType::kI32, dev);
  const int32_t none = INT32_MAX;
  throwIfCuda(cudaMemcpyAsync(bad.data(), &none, sizeof(none), cudaMemcpyHostToDevice, stream),
              "cudaMemcpyAsync");
  const cpu::GateParams params{experts,
                               k,
                               static_cast<int>(o.score),
                               o.renormalize,
                               o.scaling_factor,
                               o.num_groups,
                               o.topk_groups,
                               candidates};
  Tensor candidate_idx, candidate_weights, reroute_load, reroute_counters;
  if (reroute) {
    candidate_idx = Tensor::empty({tokens, std::max(candidates, 1)}, DType::kI32, dev);
    candidate_weights = Tensor::empty({tokens, std::max(candidates, 1)}, DType::kF32, dev);
    reroute_load = Tensor::empty({experts}, DType::kI32, dev);
    reroute_counters = Tensor::empty({2}, DType::kI32, dev);
  }
  throwIfCuda(
      cuda::gate(logits.as<const float>(), tokens,
                 bias != nullptr ? bias->as<const float>() : nullptr, params,
                 routing.topk_idx.as<int32_t>(), routing.topk_weights.as<float>(),
                 reroute ? candidate_idx.as<int32_t>() : nullptr,
                 reroute ? candidate_weights.as<float>() : nullptr, bad.as<int32_t>(), stream),
      "the gate kernel");
  throwIfCuda(cudaMemcpyAsync(routing.selected_idx.data(), routing.topk_idx.data(),
                              routing.topk_idx.bytes(), cudaMemcpyDeviceToDevice, stream),
              "cudaMemcpyAsync");
  // Capacity: the drop policies on the GPU; kError only looks for the first overflow.
  Tensor first_overflow = Tensor::empty({1}, DType::kI32, dev);
  throwIfCuda(
      cudaMemcpyAsync(first_overflow.data(), &none, sizeof(none), cudaMemcpyHostToDevice, stream),
      "cudaMemcpyAsync");
  if (capacity > 0) {
    cuda::Reroute moves;
    if (reroute) {
      moves = {
          candidate_idx.as<const int32_t>(), candidate_weights.as<const float>(), candidates, k,
          reroute_load.as<int32_t>(),        reroute_counters.as<int32_t>()};
    }
    throwIfCuda(cuda::applyCapacity(routing.topk_idx.as<int32_t>(),
                                    routing.topk_weights.as<float>(), tokens * k, experts, capacity,
                                    o.drop_policy == DropPolicy::kProbability,
                                    o.overflow != OverflowPolicy::kError,
                                    {counts.as<int32_t>(), first_overflow.as<int32_t>()},
                                    reroute ? &moves : nullptr, stream),
                "capacity");
  } else {
    throwIfCuda(cuda::countExperts(routing.topk_idx.as<int32_t>(), tokens * k, experts,
                                   counts.as<int32_t>(), stream),
                "the expert count");
  }
  // The one wait: LoadStats and the finiteness verdict are host values.
  std::vector<int32_t> host_counts(static_cast<size_t>(experts));
  int32_t first_bad = none;
  int32_t overflow_slot = none;
  throwIfCuda(cudaMemcpyAsync(host_counts.data(), counts.data(), counts.bytes(),
                              cudaMemcpyDeviceToHost, stream),
              "cudaMemcpyAsync");
  throwIfCuda(
      cudaMemcpyAsync(&first_bad, bad.data(), sizeof(first_bad), cudaMemcpyDeviceToHost, stream),
      "cudaMemcpyAsync");
  throwIfCuda(cudaMemcpyAsync(&overflow_slot, first_overflow.data(), sizeof(overflow_slot),
                              cudaMemcpyDeviceToHost, stream),
              "cudaMemcpyAsync");
  std::vector<int32_t> host_load;
  int32_t host_moves[2] = {0, 0};  // rerouted, dropped
  if (reroute) {
    host_load.resize(static_cast<size_t>(experts));
    throwIfCuda(cudaMemcpyAsync(host_load.data(), reroute_load.data(), reroute_load.bytes(),
                                cudaMemcpyDeviceToHost, stream),
                "cudaMemcpyAsync");
    throwIfCuda(cudaMemcpyAsync(host_moves, reroute_counters.data(), sizeof(host_moves),
                                cudaMemcpyDeviceToHost, stream),
                "cudaMemcpyAsync");
  }
  throwIfCuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  if (first_bad != none) {
    throw Error(
        StatusCode::kInvalidArgument,
        text::format("logits row {} (or the expert bias) holds a non-finite value; the "
                     "router takes finite logits only (check the gate's input for overflow)",
                     first_bad));
  }
  if (overflow_slot != none && o.overflow == OverflowPolicy::kError) {
    int32_t e = 0;
    throwIfCuda(cudaMemcpy(&e, routing.topk_idx.as<int32_t>() + overflow_slot, sizeof(e),
                           cudaMemcpyDeviceToHost),
                "cudaMemcpy");
    throw Error(StatusCode::kInvalidArgument,
                text::format("expert {} is over capacity: {} assignments for a capacity of {} "
                             "(capacity_factor={}, {} tokens, top-{}); raise capacity_factor or "
                             "use OverflowPolicy::kDrop or kReroute",
                             e, host_counts[static_cast<size_t>(e)], capacity, o.capacity_factor,
                             tokens, k));
  }
  LoadStats& stats = routing.stats;
  stats.capacity = capacity;
  stats.demand_per_expert.assign(host_counts.begin(), host_counts.end());
  stats.tokens_per_expert = stats.demand_per_expert;
  if (reroute) {
    stats.tokens_per_expert.assign(host_load.begin(), host_load.end());
    stats.rerouted = host_moves[0];
    stats.dropped = host_moves[1];
  } else if (capacity > 0) {
    for (int64_t& load : stats.tokens_per_expert) {
      stats.dropped += std::max<int64_t>(0, load - capacity);
      load = std::min(load, capacity);
    }
  }
  const int64_t total =
      std::accumulate(stats.tokens_per_expert.begin(), stats.tokens_per_expert.end(), int64_t{0});
  const int64_t max =
      *std::max_element(stats.tokens_per_expert.begin(), stats.tokens_per_expert.end());
  stats.imbalance =
      total > 0 ? static_cast<double>(max) * experts / static_cast<double>(total) : 1.0;
  return routing;
#else
  (void)tokens;
  (void)experts;
  return routeStaged(router, logits, bias, context);
#endif
}

}  // namespace moecomm
