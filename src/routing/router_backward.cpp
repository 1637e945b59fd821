// Balancing losses and the gradient of the logits, for every score function. Formulas:
// docs/routing.md. The per-token arithmetic (f64) is kernels/common/router_grad.hpp, which the
// GPU runs too.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/common/router_grad.hpp"
#include "moecomm/router.hpp"
#include "src/core/host_mirror.hpp"
#include "src/core/tensor_checks.hpp"
#include "src/routing/router_checks.hpp"
#include "src/routing/router_grad.hpp"

namespace moecomm {

static_assert(routergrad::kSoftmax == static_cast<int>(ScoreFunction::kSoftmax) &&
                  routergrad::kSigmoid == static_cast<int>(ScoreFunction::kSigmoid) &&
                  routergrad::kTopkThenSoftmax == static_cast<int>(ScoreFunction::kTopkThenSoftmax),
              "kernels/common/router_grad.hpp mirrors ScoreFunction's values");

namespace {

struct AuxChunk {
  int64_t begin, end;
  std::vector<double> f;  // fraction of kept assignments per expert
};

std::vector<AuxChunk> auxChunks(const Routing& routing, int64_t tokens, int E, int k,
                                const RouterLossOptions& lo, const std::vector<int64_t>* global) {
  std::vector<AuxChunk> chunks;
  const int64_t len = lo.aux_seq_len > 0 ? lo.aux_seq_len : std::max<int64_t>(tokens, 1);
  for (int64_t begin = 0; begin < tokens; begin += len) {
    AuxChunk c{begin, std::min(tokens, begin + len), std::vector<double>(E, 0.0)};
    double total = 0.0;
    if (global != nullptr && lo.aux_seq_len <= 0) {
      for (int e = 0; e < E; ++e) total += c.f[e] = static_cast<double>((*global)[e]);
    } else {
      for (int64_t a = c.begin * k; a < c.end * k; ++a) {
        const int32_t e = routing.topk_idx.as<const int32_t>()[a];
        if (e >= 0 && e < E) {
          c.f[e] += 1.0;
          total += 1.0;
        }
      }
    }
    for (double& v : c.f) v = total > 0 ? v / total : 0.0;
    chunks.push_back(std::move(c));
  }
  return chunks;
}

// The views' metadata and the options (any device).
Status checkLossShapes(const RouterOptions& o, const TensorView& logits, const Routing& routing,
                       const RouterLossOptions& lo, const std::vector<int64_t>* global) {
  MOECOMM_RETURN_IF_ERROR(checkRouterShapes(o, logits, nullptr));
  MOECOMM_RETURN_IF_ERROR(checkMatrix("routing.topk_idx", routing.topk_idx, logits.shape[0], o.topk,
                                      {DType::kI32}, true));
  MOECOMM_RETURN_IF_ERROR(checkMatrix("routing.selected_idx", routing.selected_idx, logits.shape[0],
                                      o.topk, {DType::kI32}, true));
  if (global != nullptr && static_cast<int64_t>(global->size()) != logits.shape[1]) {
    return makeError(StatusCode::kInvalidArgument,
                     "global_tokens_per_expert has {} entries, expected one per expert ({})",
                     global->size(), logits.shape[1]);
  }
  if (!std::isfinite(lo.aux_loss_coeff) || !std::isfinite(lo.z_loss_coeff) || lo.aux_seq_len < 0) {
    return makeError(StatusCode::kInvalidArgument,
                     "loss coefficients must be finite and aux_seq_len >= 0");
  }
  return Status::ok();
}

// Host tensors: the shapes, then every logit finite.
Status checkLossInputs(const RouterOptions& o, const TensorView& logits, const Routing& routing,
                       const RouterLossOptions& lo, const std::vector<int64_t>* global) {
  MOECOMM_RETURN_IF_ERROR(checkLossShapes(o, logits, routing, lo, global));
  return checkRouterInputs(o, logits, nullptr);
}

}  // namespace

routergrad::Params routerGradParams(const RouterOptions& o, int64_t tokens, int experts,
                                    const RouterLossOptions& lo) {
  routergrad::Params p;
  p.experts = experts;
  p.topk = o.topk;
  p.score = static_cast<int>(o.score);
  p.normalized = o.renormalize || o.score == ScoreFunction::kTopkThenSoftmax;
  p.scale = o.scaling_factor;
  p.aux_coeff = lo.aux_loss_coeff;
  p.aux_seq_len = lo.aux_seq_len;
  p.tokens = tokens;
  p.z_coeff = lo.z_loss_coeff;
  return p;
}

RouterLosses sumLosses(const routergrad::Params& p, const std::vector<double>& fq,
                       const std::vector<double>& lse) {
  RouterLosses out;
  const int64_t T = p.tokens;
  if (!fq.empty()) {
    const int64_t len = routergrad::auxChunkLength(p);
    const auto chunks = static_cast<double>(routergrad::auxChunks(p));
    for (int64_t begin = 0; begin < T; begin += len) {
      const int64_t end = std::min(T, begin + len);
      double sum = 0.0;
      for (int64_t t = begin; t < end; ++t) sum += fq[t];
      out.aux_loss += p.aux_coeff * p.experts * (sum / static_cast<double>(end - begin)) / chunks;
    }
  }
  for (int64_t t = 0; t < static_cast<int64_t>(lse.size()); ++t) {
    out.z_loss += p.z_coeff * lse[t] * lse[t] / static_cast<double>(T);
  }
  return out;
}

namespace {

// A host copy of a routing whose tensors live on a GPU (losses and backward run on the CPU).
Routing routingOnHost(const Routing& routing, ExecContext context) {
  Routing host = routing;
  host.topk_idx = copyTo(routing.topk_idx.view(), Device::cpu(), context);
  host.topk_weights = copyTo(routing.topk_weights.view(), Device::cpu(), context);
  host.selected_idx = copyTo(routing.selected_idx.view(), Device::cpu(), context);
  return host;
}

bool routingOnCuda(const TensorView& logits, const Routing& routing) {
  return anyCuda({&logits, &routing.topk_idx.view(), &routing.topk_weights.view(),
                  &routing.selected_idx.view()});
}

}  // namespace

RouterLosses Router::losses(const TensorView& logits, const Routing& routing,
                            const RouterLossOptions& lo, const std::vector<int64_t>* global,
                            ExecContext context) const {
  if (allOnOneGpu({&logits, &routing.topk_idx.view(), &routing.selected_idx.view()})) {
    throwIfError(checkLossShapes(options_, logits, routing, lo, global));
    const routergrad::Params p =
        routerGradParams(options_, logits.shape[0], static_cast<int>(logits.shape[1]), lo);
    RouterLosses out;
    throwIfError(lossesOnDevice(p, logits, routing, global, context, &out));
    return out;
  }
  if (routingOnCuda(logits, routing)) {  // mixed devices: through host copies on the stream
    const Tensor host_logits = copyTo(logits, Device::cpu(), context);
    return losses(host_logits.view(), routingOnHost(routing, context), lo, global);
  }
  throwIfError(checkLossInputs(options_, logits, routing, lo, global));
  const int64_t T = logits.shape[0];
  const int E = static_cast<int>(logits.shape[1]);
  RouterLosses out;
  if (T == 0) return out;
  const routergrad::Params p = routerGradParams(options_, T, E, lo);
  std::vector<double> scratch(static_cast<size_t>(E));
  const bool aux = lo.aux_loss_coeff != 0.0, z = lo.z_loss_coeff != 0.0;
  std::vector<AuxChunk> chunks;
  if (aux) chunks = auxChunks(routing, T, E, options_.topk, lo, global);
  std::vector<double> fq(aux ? static_cast<size_t>(T) : 0), lse(z ? static_cast<size_t>(T) : 0);
  const int64_t len = routergrad::auxChunkLength(p);
  for (int64_t t = 0; t < T; ++t) {
    routergrad::tokenLossTerms(p, logits.as<const float>() + t * E,
                               aux ? chunks[t / len].f.data() : nullptr, {scratch.data(), 1},
                               aux ? &fq[t] : nullptr, z ? &lse[t] : nullptr);
  }
  return sumLosses(p, fq, lse);
}

void Router::backward(const TensorView& logits, const Routing& routing,
                      const TensorView* grad_weights, const RouterLossOptions& lo,
                      const TensorView& grad_logits, const std::vector<int64_t>* global,
                      ExecContext context) const {
  if (allOnOneGpu({&logits, &routing.topk_idx.view(), &routing.selected_idx.view(), grad_weights,
                   &grad_logits})) {
    throwIfError(checkLossShapes(options_, logits, routing, lo, global));
    const int64_t T = logits.shape[0];
    throwIfError(checkMatrix("grad_logits", grad_logits, T, logits.shape[1], {DType::kF32}, true));
    if (grad_weights != nullptr) {
      throwIfError(
          checkMatrix("grad_weights", *grad_weights, T, options_.topk, {DType::kF32}, true));
    }
    const routergrad::Params p =
        routerGradParams(options_, T, static_cast<int>(logits.shape[1]), lo);
    throwIfError(backwardOnDevice(p, logits, routing, grad_weights, global, grad_logits, context));
    return;
  }
  if (routingOnCuda(logits, routing) || anyCuda({grad_weights, &grad_logits})) {
    // Mixed devices: through host copies on the context's stream; grad_logits is written only on
    // success.
    const Tensor host_logits = copyTo(logits, Device::cpu(), context);
    Tensor host_grad_weights;
    if (grad_weights != nullptr) host_grad_weights = copyTo(*grad_weights, Device::cpu(), context);
    HostMirror mirror(context);
    TensorView host_grad_logits;
    throwIfError(mirror.output(grad_logits, &host_grad_logits));
    backward(host_logits.view(), routingOnHost(routing, context),
             grad_weights != nullptr ? &host_grad_weights.view() : nullptr, lo, host_grad_logits,
             global);
    throwIfError(mirror.writeBack());
    return;
  }
  throwIfError(checkLossInputs(options_, logits, routing, lo, global));
  const int64_t T = logits.shape[0];
  const int E = static_cast<int>(logits.shape[1]);
  const int k = options_.topk;
  throwIfError(checkMatrix("grad_logits", grad_logits, T, E, {DType::kF32}));
  if (grad_weights != nullptr) {
    throwIfError(checkMatrix("grad_weights", *grad_weights, T, k, {DType::kF32}));
  }
  if (T == 0) return;
  const routergrad::Params p = routerGradParams(options_, T, E, lo);
  std::vector<AuxChunk> chunks;
  if (lo.aux_loss_coeff != 0.0) chunks = auxChunks(routing, T, E, k, lo, global);
  const int64_t len = routergrad::auxChunkLength(p);
  std::vector<double> scratch(2 * static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    routergrad::tokenGrad(
        p, t, logits.as<const float>() + t * E, routing.topk_idx.as<const int32_t>() + t * k,
        routing.selected_idx.as<const int32_t>() + t * k,
        grad_weights != nullptr ? grad_weights->as<const float>() + t * k : nullptr,
        chunks.empty() ? nullptr : chunks[t / len].f.data(), {scratch.data(), 1},
        grad_logits.as<float>() + t * E);
  }
}

}  // namespace moecomm
