// The router: validation, the gate kernel, capacity and overflow, and load statistics.
#include "moecomm/router.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/finite.hpp"
#include "kernels/cpu/gating.hpp"
#include "src/core/device.hpp"
#include "src/core/host_mirror.hpp"
#include "src/core/tensor_checks.hpp"
#include "src/routing/capacity.hpp"
#include "src/routing/load_stats.hpp"
#include "src/routing/router_checks.hpp"
#include "src/routing/router_device.hpp"

namespace moecomm {

Status validateRouterOptions(const RouterOptions& o) {
  if (o.topk < 1) {
    return makeError(StatusCode::kInvalidArgument, "RouterOptions.topk must be >= 1, got {}",
                     o.topk);
  }
  if (o.score != ScoreFunction::kSoftmax && o.score != ScoreFunction::kSigmoid &&
      o.score != ScoreFunction::kTopkThenSoftmax) {
    return makeError(StatusCode::kInvalidArgument, "RouterOptions.score {} is not a ScoreFunction",
                     static_cast<int>(o.score));
  }
  if (!(o.capacity_factor >= 0.0) || !std::isfinite(o.capacity_factor)) {
    return makeError(StatusCode::kInvalidArgument,
                     "capacity_factor must be >= 0 (0 = dropless), got {}", o.capacity_factor);
  }
  if (o.min_capacity < 0) {
    return makeError(StatusCode::kInvalidArgument, "min_capacity must be >= 0, got {}",
                     o.min_capacity);
  }
  if (o.reroute_candidates < 0) {
    return makeError(StatusCode::kInvalidArgument, "reroute_candidates must be >= 0, got {}",
                     o.reroute_candidates);
  }
  if (!std::isfinite(o.scaling_factor)) {
    return makeError(StatusCode::kInvalidArgument, "scaling_factor must be finite, got {}",
                     o.scaling_factor);
  }
  if (o.num_groups > 1 && (o.topk_groups < 1 || o.topk_groups > o.num_groups)) {
    return makeError(StatusCode::kInvalidArgument,
                     "topk_groups={} is out of range [1, num_groups={}]", o.topk_groups,
                     o.num_groups);
  }
  return Status::ok();
}

Status checkRouterShapes(const RouterOptions& o, const TensorView& logits, const TensorView* bias) {
  MOECOMM_RETURN_IF_ERROR(checkMatrix("logits", logits, -1, -1, {DType::kF32}, true));
  const int64_t experts = logits.shape[1];
  if (experts < 1) {
    return makeError(StatusCode::kInvalidArgument, "logits {} has no experts", logits.describe());
  }
  if (o.topk > experts) {
    return makeError(StatusCode::kInvalidArgument, "topk={} exceeds the {} experts of logits {}",
                     o.topk, experts, logits.describe());
  }
  if (o.num_groups > 1) {
    if (experts % o.num_groups != 0) {
      return makeError(StatusCode::kInvalidArgument, "num_groups={} does not divide the {} experts",
                       o.num_groups, experts);
    }
    const int64_t allowed = static_cast<int64_t>(o.topk_groups) * (experts / o.num_groups);
    if (o.topk > allowed) {
      return makeError(StatusCode::kInvalidArgument,
                       "topk={} exceeds the {} experts of the {} allowed groups (topk_groups x "
                       "experts per group); raise topk_groups",
                       o.topk, allowed, o.topk_groups);
    }
  }
  if (bias != nullptr && (bias->dtype != DType::kF32 || bias->ndim != 1 ||
                          bias->shape[0] != experts || bias->data == nullptr)) {
    return makeError(StatusCode::kInvalidArgument,
                     "expert_bias is {}, expected f32[{}] (one bias per expert)", bias->describe(),
                     experts);
  }
  if (bias != nullptr && bias->device.kind != logits.device.kind) {
    return makeError(StatusCode::kInvalidArgument,
                     "expert_bias is on {} but logits on {}: pass both on the same device",
                     bias->describe(), logits.describe());
  }
  return Status::ok();
}

namespace {

// The host inputs' metadata and the bias values: everything but the logits' values.
Status checkHostRouterInputs(const RouterOptions& o, const TensorView& logits,
                             const TensorView* bias) {
  MOECOMM_RETURN_IF_ERROR(checkMatrix("logits", logits, -1, -1, {DType::kF32}));
  MOECOMM_RETURN_IF_ERROR(checkRouterShapes(o, logits, bias));
  if (bias != nullptr) {
    for (int64_t e = 0; e < bias->shape[0]; ++e) {
      if (!std::isfinite(bias->as<const float>()[e])) {
        return makeError(StatusCode::kInvalidArgument, "expert_bias[{}] is not finite", e);
      }
    }
  }
  return Status::ok();
}

// The first non-finite logit at or after token `from`, named in the error (ok if there is none).
Status nonFiniteLogit(const TensorView& logits, int64_t from) {
  const int64_t experts = logits.shape[1];
  const auto* data = logits.as<const float>();
  for (int64_t i = from * experts; i < logits.numel(); ++i) {
    if (!std::isfinite(data[i])) {
      return makeError(StatusCode::kInvalidArgument,
                       "logits[{}, {}] = {} is not finite; the router takes finite logits only "
                       "(check the gate's input for overflow)",
                       i / experts, i % experts, data[i]);
    }
  }
  return Status::ok();
}

}  // namespace

Status checkRouterInputs(const RouterOptions& o, const TensorView& logits, const TensorView* bias) {
  MOECOMM_RETURN_IF_ERROR(checkHostRouterInputs(o, logits, bias));
  // One branch-free pass; the search for the culprit runs only on failure.
  if (!cpu::allFinite(logits.as<const float>(), logits.numel())) return nonFiniteLogit(logits, 0);
  return Status::ok();
}

Router::Router(const RouterOptions& options) : options_(options) {
  throwIfError(validateRouterOptions(options));
}

Routing Router::route(const TensorView& logits, const TensorView* expert_bias,
                      ExecContext context) const {
  if (anyCuda({&logits, expert_bias})) {
    Routing routing = routeOnDeviceNoWait(*this, logits, expert_bias, context);
    collectStats(routing, context);  // the one wait
    return routing;
  }
  // The logits' finiteness is checked inside the gate, row by row, so that they are read from
  // memory once, not twice.
  throwIfError(checkHostRouterInputs(options_, logits, expert_bias));
  const int64_t tokens = logits.shape[0];
  const int experts = static_cast<int>(logits.shape[1]);
  const int k = options_.topk;
  const bool capacity_on = options_.capacity_factor > 0.0;
  const int c = capacity_on && options_.overflow == OverflowPolicy::kReroute
                    ? options_.reroute_candidates
                    : 0;
  Routing routing;
  routing.topk_idx = Tensor::empty({tokens, k}, DType::kI32);
  routing.topk_weights = Tensor::empty({tokens, k}, DType::kF32);
  std::vector<int32_t> candidate_idx(static_cast<size_t>(tokens * c));
  std::vector<float> candidate_weights(candidate_idx.size());
  cpu::GateParams params{experts,
                         k,
                         static_cast<int>(options_.score),
                         options_.renormalize,
                         options_.scaling_factor,
                         options_.num_groups,
                         options_.topk_groups,
                         c};
  const int64_t non_finite = cpu::gate(
      logits.as<const float>(), tokens, expert_bias ? expert_bias->as<const float>() : nullptr,
      params, routing.topk_idx.as<int32_t>(), routing.topk_weights.as<float>(),
      candidate_idx.data(), candidate_weights.data());
  if (non_finite >= 0) throwIfError(nonFiniteLogit(logits, non_finite));
  routing.selected_idx = Tensor::empty({tokens, k}, DType::kI32);
  if (tokens > 0) {
    std::copy_n(routing.topk_idx.as<int32_t>(), tokens * k, routing.selected_idx.as<int32_t>());
  }
  const int64_t capacity = expertCapacity(options_, tokens, experts);
  throwIfError(applyCapacity(options_, tokens, experts, capacity, routing.topk_idx.as<int32_t>(),
                             routing.topk_weights.as<float>(), candidate_idx.data(),
                             candidate_weights.data(), &routing.stats));
  return routing;
}

Routing Router::routeOnStream(const TensorView& logits, const TensorView* expert_bias,
                              ExecContext context) const {
  if (anyCuda({&logits, expert_bias})) {
    return routeOnDeviceNoWait(*this, logits, expert_bias, context);
  }
  Routing routing = route(logits, expert_bias, context);
  routing.device_stats = encodeLoadStats(routing.stats, static_cast<int>(logits.shape[1]));
  return routing;
}

const LoadStats& Router::collectStats(Routing& routing, ExecContext context) const {
  if (!routing.stats.demand_per_expert.empty() || !routing.device_stats.defined()) {
    return routing.stats;  // collected already
  }
  const int64_t size = routing.device_stats.numel();
  if (routing.device_stats.dtype() != DType::kI64 || size < 4 || size % 2 != 0 ||
      !routing.topk_idx.defined()) {
    throwIfError(makeError(StatusCode::kInvalidArgument,
                           "routing.device_stats is {}, not the i64[2E + 4] that routeOnStream "
                           "makes; pass the Routing routeOnStream returned",
                           routing.device_stats.view().describe()));
  }
  const Tensor host = routing.device_stats.device().isCuda()
                          ? copyTo(routing.device_stats, Device::cpu(), context)
                          : routing.device_stats;
  LoadStats stats;
  throwIfError(decodeLoadStats(options_, host.as<const int64_t>(), static_cast<int>((size - 4) / 2),
                               routing.topk_idx.dim(0), routing, &stats));
  routing.stats = std::move(stats);
  return routing.stats;
}

void updateExpertBias(const TensorView& bias, const std::vector<int64_t>& load, float rate,
                      ExecContext context) {
  if (bias.dtype != DType::kF32 || bias.ndim != 1 ||
      bias.shape[0] != static_cast<int64_t>(load.size()) ||
      (bias.data == nullptr && !load.empty())) {
    throwIfError(makeError(StatusCode::kInvalidArgument,
                           "expert_bias is {}, expected f32[{}] to match the load vector",
                           bias.describe(), load.size()));
  }
  if (load.empty()) return;
  if (bias.device.isCuda()) {  // a small vector: updated on the host, between two waits
    throwIfError(device::requireDevice(bias.device.index));
    const Tensor host = copyTo(bias, Device::cpu(), context);
    updateExpertBias(host.view(), load, rate);
    throwIfError(device::setDevice(bias.device.index));
    throwIfError(device::copyAsync(bias.data, host.data(), bias.bytes(),
                                   device::Direction::kToDevice, context.stream));
    throwIfError(device::synchronize(context.stream));
    return;
  }
  double mean = 0.0;
  for (int64_t l : load) mean += static_cast<double>(l);
  mean /= static_cast<double>(load.size());
  auto* b = bias.as<float>();
  for (size_t e = 0; e < load.size(); ++e) {
    const double diff = mean - static_cast<double>(load[e]);
    b[e] += rate * static_cast<float>((diff > 0) - (diff < 0));
  }
}

}  // namespace moecomm
