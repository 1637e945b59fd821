#include "src/ep/routing_plan.hpp"

#include "src/core/tensor_checks.hpp"

namespace moecomm {

Status planRouting(const TensorView& topk_idx, const ExpertPlacement& placement, RoutingPlan* out) {
  MOECOMM_RETURN_IF_ERROR(
      checkMatrix("topk_idx", topk_idx, -1, placement.topk, {DType::kI32, DType::kI64}));
  const int64_t tokens = topk_idx.shape[0];
  if (tokens > INT32_MAX) {
    return makeError(StatusCode::kInvalidArgument, "{} tokens exceed the limit of {} per rank",
                     tokens, INT32_MAX);
  }
  const int k = placement.topk;
  RoutingPlan plan;
  plan.tokens = tokens;
  plan.topk = k;
  plan.expert.resize(static_cast<size_t>(tokens * k));
  plan.owner.resize(plan.expert.size());
  plan.rank_tokens.resize(static_cast<size_t>(placement.ranks));
  const bool wide = topk_idx.dtype == DType::kI64;
  std::vector<int> visited_rank(static_cast<size_t>(placement.ranks), -1);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int j = 0; j < k; ++j) {
      const int64_t i = t * k + j;
      const int64_t e = wide ? topk_idx.as<int64_t>()[i] : topk_idx.as<int32_t>()[i];
      if (e < -1 || e >= placement.num_experts) {
        return makeError(StatusCode::kInvalidArgument,
                         "topk_idx[{}, {}] = {} is out of range: expert ids are in [0, {}), or -1 "
                         "for an unused slot",
                         t, j, e, placement.num_experts);
      }
      for (int prev = 0; prev < j && e >= 0; ++prev) {
        if (plan.expert[static_cast<size_t>(t * k + prev)] == e) {
          return makeError(StatusCode::kInvalidArgument,
                           "token {} names expert {} twice (slots {} and {}); each slot of a "
                           "token must name a different expert or -1",
                           t, e, prev, j);
        }
      }
      plan.expert[i] = static_cast<int32_t>(e);
      const int owner = e < 0 ? -1 : static_cast<int>(e / placement.local_experts);
      plan.owner[i] = owner;
      if (owner >= 0 && visited_rank[owner] != t) {
        visited_rank[owner] = static_cast<int>(t);
        plan.rank_tokens[owner].push_back(static_cast<int32_t>(t));
      }
    }
  }
  *out = std::move(plan);
  return Status::ok();
}

}  // namespace moecomm
