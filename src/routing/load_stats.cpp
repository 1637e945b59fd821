#include "src/routing/load_stats.hpp"

#include "src/routing/capacity.hpp"

namespace moecomm {

Tensor encodeLoadStats(const LoadStats& stats, int experts) {
  Tensor t = Tensor::empty({deviceStatsSize(experts)}, DType::kI64);
  int64_t* v = t.as<int64_t>();
  for (int e = 0; e < experts; ++e) {
    v[e] = stats.demand_per_expert[static_cast<size_t>(e)];
    v[experts + e] = stats.tokens_per_expert[static_cast<size_t>(e)];
  }
  v[2 * experts] = stats.dropped;
  v[2 * experts + 1] = stats.rerouted;
  v[2 * experts + 2] = -1;
  v[2 * experts + 3] = -1;
  return t;
}

Status decodeLoadStats(const RouterOptions& o, const int64_t* v, int experts, int64_t tokens,
                       const Routing& routing, LoadStats* out) {
  const int64_t bad_token = v[2 * experts + 2];
  if (bad_token >= 0) {
    return makeError(StatusCode::kInvalidArgument,
                     "logits row {} (or the expert bias) holds a non-finite value; the router "
                     "takes finite logits only (check the gate's input for overflow)",
                     bad_token);
  }
  const int64_t capacity = expertCapacity(o, tokens, experts);
  const int64_t overflow_slot = v[2 * experts + 3];
  if (overflow_slot >= 0 && o.overflow == OverflowPolicy::kError) {
    // The slot's expert: one element of topk_idx, copied from wherever it lives.
    TensorView slot = TensorView::vector(routing.topk_idx.as<int32_t>() + overflow_slot,
                                         DType::kI32, 1, routing.topk_idx.device());
    int32_t e = 0;
    try {
      e = copyTo(slot, Device::cpu()).as<int32_t>()[0];
    } catch (const Error& error) {
      return Status(error.code(), error.what());
    }
    if (e < 0 || e >= experts) {
      return makeError(StatusCode::kInternalError,
                       "the overflowing slot {} holds expert {} of {}; please report this",
                       overflow_slot, e, experts);
    }
    return overCapacity(o, e, v[e], capacity, tokens);
  }
  LoadStats stats;
  stats.capacity = capacity;
  stats.demand_per_expert.assign(v, v + experts);
  stats.tokens_per_expert.assign(v + experts, v + 2 * experts);
  stats.dropped = v[2 * experts];
  stats.rerouted = v[2 * experts + 1];
  stats.imbalance = imbalanceOf(stats.tokens_per_expert);
  *out = std::move(stats);
  return Status::ok();
}

}  // namespace moecomm
