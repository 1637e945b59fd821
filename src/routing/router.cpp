#include "moecomm/router.hpp"

#include <cmath>

#include "kernels/cpu/topk_softmax.hpp"
#include "src/core/tensor_checks.hpp"

namespace moecomm {

namespace {

Status checkLogits(const TensorView& logits, int topk) {
  MOECOMM_RETURN_IF_ERROR(checkMatrix("logits", logits, -1, -1, {DType::kF32}));
  const int64_t experts = logits.shape[1];
  if (topk > experts) {
    return makeError(StatusCode::kInvalidArgument, "topk={} exceeds the {} experts of logits {}",
                     topk, experts, logits.describe());
  }
  const auto* data = logits.as<const float>();
  for (int64_t i = 0; i < logits.numel(); ++i) {
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

Router::Router(const RouterOptions& options) : options_(options) {
  if (options.topk < 1) {
    throwIfError(makeError(StatusCode::kInvalidArgument, "RouterOptions.topk must be >= 1, got {}",
                           options.topk));
  }
}

Routing Router::route(const TensorView& logits, ExecContext /*context*/) const {
  throwIfError(checkLogits(logits, options_.topk));
  const int64_t tokens = logits.shape[0];
  const int experts = static_cast<int>(logits.shape[1]);
  Routing routing;
  routing.topk_idx = Tensor::empty({tokens, options_.topk}, DType::kI32);
  routing.topk_weights = Tensor::empty({tokens, options_.topk}, DType::kF32);
  cpu::topkSoftmax(logits.as<const float>(), tokens, experts, options_.topk, options_.renormalize,
                   routing.topk_idx.as<int32_t>(), routing.topk_weights.as<float>());
  return routing;
}

}  // namespace moecomm
