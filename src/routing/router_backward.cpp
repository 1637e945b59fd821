// Balancing losses and the gradient of the logits, for every score function. Formulas:
// docs/routing.md. Everything here runs in f64 per token.
#include <cmath>
#include <vector>

#include "moecomm/router.hpp"
#include "src/core/host_mirror.hpp"
#include "src/core/tensor_checks.hpp"
#include "src/routing/router_checks.hpp"

namespace moecomm {

namespace {

// q_t: the per-token distribution the aux loss averages (softmax, or sigmoid normalized to sum 1).
void tokenDistribution(const float* row, int E, ScoreFunction score, std::vector<double>& q,
                       std::vector<double>& sigma_prime_over_z) {
  if (score == ScoreFunction::kSigmoid) {
    double z = 0.0;
    for (int e = 0; e < E; ++e) z += q[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(row[e])));
    for (int e = 0; e < E; ++e) {
      sigma_prime_over_z[e] = q[e] * (1.0 - q[e]) / z;
      q[e] /= z;
    }
  } else {
    double max = row[0], sum = 0.0;
    for (int e = 1; e < E; ++e) max = std::max(max, static_cast<double>(row[e]));
    for (int e = 0; e < E; ++e) sum += q[e] = std::exp(row[e] - max);
    for (int e = 0; e < E; ++e) q[e] /= sum;
  }
}

double logSumExp(const float* row, int E) {
  double max = row[0], sum = 0.0;
  for (int e = 1; e < E; ++e) max = std::max(max, static_cast<double>(row[e]));
  for (int e = 0; e < E; ++e) sum += std::exp(row[e] - max);
  return max + std::log(sum);
}

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
        if (e >= 0) {
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

Status checkLossInputs(const RouterOptions& o, const TensorView& logits, const Routing& routing,
                       const RouterLossOptions& lo, const std::vector<int64_t>* global) {
  MOECOMM_RETURN_IF_ERROR(checkRouterInputs(o, logits, nullptr));
  MOECOMM_RETURN_IF_ERROR(
      checkMatrix("routing.topk_idx", routing.topk_idx, logits.shape[0], o.topk, {DType::kI32}));
  MOECOMM_RETURN_IF_ERROR(checkMatrix("routing.selected_idx", routing.selected_idx, logits.shape[0],
                                      o.topk, {DType::kI32}));
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
  if (routingOnCuda(logits, routing)) {  // through host copies, on the context's stream
    const Tensor host_logits = copyTo(logits, Device::cpu(), context);
    return losses(host_logits.view(), routingOnHost(routing, context), lo, global);
  }
  throwIfError(checkLossInputs(options_, logits, routing, lo, global));
  const int64_t T = logits.shape[0];
  const int E = static_cast<int>(logits.shape[1]);
  RouterLosses out;
  if (T == 0) return out;
  std::vector<double> q(E), unused(E);
  if (lo.aux_loss_coeff != 0.0) {
    auto chunks = auxChunks(routing, T, E, options_.topk, lo, global);
    for (const AuxChunk& c : chunks) {
      std::vector<double> P(E, 0.0);
      for (int64_t t = c.begin; t < c.end; ++t) {
        tokenDistribution(logits.as<const float>() + t * E, E, options_.score, q, unused);
        for (int e = 0; e < E; ++e) P[e] += q[e] / static_cast<double>(c.end - c.begin);
      }
      double s = 0.0;
      for (int e = 0; e < E; ++e) s += c.f[e] * P[e];
      out.aux_loss += lo.aux_loss_coeff * E * s / static_cast<double>(chunks.size());
    }
  }
  if (lo.z_loss_coeff != 0.0) {
    for (int64_t t = 0; t < T; ++t) {
      const double lse = logSumExp(logits.as<const float>() + t * E, E);
      out.z_loss += lo.z_loss_coeff * lse * lse / static_cast<double>(T);
    }
  }
  return out;
}

void Router::backward(const TensorView& logits, const Routing& routing,
                      const TensorView* grad_weights, const RouterLossOptions& lo,
                      const TensorView& grad_logits, const std::vector<int64_t>* global,
                      ExecContext context) const {
  if (routingOnCuda(logits, routing) || anyCuda({grad_weights, &grad_logits})) {
    // Through host copies on the context's stream; grad_logits is written only on success.
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
  const bool normalized = options_.renormalize || options_.score == ScoreFunction::kTopkThenSoftmax;
  const double scale = options_.scaling_factor;
  std::vector<double> grad(static_cast<size_t>(T * E), 0.0);
  std::vector<double> a(E), coeff(E), q(E), sig(E);

  for (int64_t t = 0; t < T && grad_weights != nullptr; ++t) {
    const float* row = logits.as<const float>() + t * E;
    // a(e): softmax p, sigmoid, or exp(l - max) for top-k-then-softmax.
    double max = row[0], sum = 0.0;
    for (int e = 1; e < E; ++e) max = std::max(max, static_cast<double>(row[e]));
    for (int e = 0; e < E; ++e) {
      if (options_.score == ScoreFunction::kSigmoid) {
        a[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(row[e])));
      } else {
        sum += a[e] = std::exp(row[e] - max);
      }
    }
    if (options_.score == ScoreFunction::kSoftmax) {
      for (double& v : a) v /= sum;
    }
    double norm = 1.0;
    const int32_t* selected = routing.selected_idx.as<const int32_t>() + t * k;
    if (normalized) {
      norm = 0.0;
      for (int j = 0; j < k; ++j) norm += selected[j] >= 0 ? a[selected[j]] : 0.0;
    }
    // d loss / d a(e) = coeff[e]; then chain through a(logits).
    std::fill(coeff.begin(), coeff.end(), 0.0);
    double through_norm = 0.0;
    for (int j = 0; j < k; ++j) {
      const int32_t e = routing.topk_idx.as<const int32_t>()[t * k + j];
      if (e < 0) continue;
      const double g = grad_weights->as<const float>()[t * k + j];
      coeff[e] += g * scale / norm;
      through_norm += g * scale * a[e] / (norm * norm);
    }
    if (normalized) {
      for (int j = 0; j < k; ++j) {
        if (selected[j] >= 0) coeff[selected[j]] -= through_norm;
      }
    }
    double* out = grad.data() + t * E;
    if (options_.score == ScoreFunction::kSoftmax) {
      double dot = 0.0;
      for (int e = 0; e < E; ++e) dot += coeff[e] * a[e];
      for (int e = 0; e < E; ++e) out[e] += a[e] * (coeff[e] - dot);
    } else if (options_.score == ScoreFunction::kSigmoid) {
      for (int e = 0; e < E; ++e) out[e] += coeff[e] * a[e] * (1.0 - a[e]);
    } else {
      for (int e = 0; e < E; ++e) out[e] += coeff[e] * a[e];
    }
  }

  if (lo.aux_loss_coeff != 0.0 && T > 0) {
    auto chunks = auxChunks(routing, T, E, k, lo, global);
    for (const AuxChunk& c : chunks) {
      const double factor = lo.aux_loss_coeff * E / static_cast<double>(chunks.size()) /
                            static_cast<double>(c.end - c.begin);
      for (int64_t t = c.begin; t < c.end; ++t) {
        tokenDistribution(logits.as<const float>() + t * E, E, options_.score, q, sig);
        double fq = 0.0;
        for (int e = 0; e < E; ++e) fq += c.f[e] * q[e];
        for (int e = 0; e < E; ++e) {
          const double d = options_.score == ScoreFunction::kSigmoid ? sig[e] * (c.f[e] - fq)
                                                                     : q[e] * (c.f[e] - fq);
          grad[t * E + e] += factor * d;
        }
      }
    }
  }
  if (lo.z_loss_coeff != 0.0) {
    for (int64_t t = 0; t < T; ++t) {
      const float* row = logits.as<const float>() + t * E;
      const double lse = logSumExp(row, E);
      for (int e = 0; e < E; ++e) {
        grad[t * E + e] +=
            lo.z_loss_coeff * 2.0 * lse * std::exp(row[e] - lse) / static_cast<double>(T);
      }
    }
  }
  auto* dst = grad_logits.as<float>();
  for (int64_t i = 0; i < T * E; ++i) dst[i] = static_cast<float>(grad[i]);
}

}  // namespace moecomm
