// The router's balancing losses and logit gradient for one token, in f64: the same code runs on
// the host (Router::losses and Router::backward on host tensors) and as one CUDA thread per token
// (kernels/cuda/router_grad.cu), so the CPU suites check the arithmetic the GPU runs, and both
// give the same numbers up to the last bit of their exp and log. Formulas: docs/routing.md.
#pragma once

#include <math.h>  // exp and log for both host and device code

#include <cstdint>

#if defined(__CUDACC__)
#define MOECOMM_ROUTER_HD __host__ __device__
#else
#define MOECOMM_ROUTER_HD
#endif

namespace moecomm::routergrad {

// ScoreFunction's values (include/moecomm/router.hpp), kept here so kernels need no API header.
inline constexpr int kSoftmax = 0;
inline constexpr int kSigmoid = 1;
inline constexpr int kTopkThenSoftmax = 2;

struct Params {
  int experts = 0;
  int topk = 0;
  int score = kSoftmax;
  bool normalized = false;  // renormalized top-k weights, or top-k-then-softmax
  double scale = 1.0;       // scaling_factor
  // Aux loss: coeff * E * sum_e f_e P_e averaged over chunks of seq_len tokens (0: one chunk).
  double aux_coeff = 0.0;
  int64_t aux_seq_len = 0;
  int64_t tokens = 0;
  double z_coeff = 0.0;  // z loss: coeff * mean_t lse_t^2
};

// Chunks of the aux loss: consecutive runs of seq_len tokens (one run of all tokens for 0).
MOECOMM_ROUTER_HD inline int64_t auxChunkLength(const Params& p) {
  return p.aux_seq_len > 0 ? p.aux_seq_len : (p.tokens > 1 ? p.tokens : 1);
}
MOECOMM_ROUTER_HD inline int64_t auxChunks(const Params& p) {
  const int64_t len = auxChunkLength(p);
  return (p.tokens + len - 1) / len;
}
// d aux / d (token t's distribution) is (coeff * E / chunks / chunk_len) * (f - <f, q>).
MOECOMM_ROUTER_HD inline double auxFactor(const Params& p, int64_t t) {
  const int64_t len = auxChunkLength(p);
  const int64_t begin = t / len * len;
  const int64_t end = begin + len < p.tokens ? begin + len : p.tokens;
  return p.aux_coeff * p.experts / static_cast<double>(auxChunks(p)) /
         static_cast<double>(end - begin);
}

MOECOMM_ROUTER_HD inline double rowMax(const float* row, int E) {
  double max = row[0];
  for (int e = 1; e < E; ++e) {
    const double v = row[e];
    max = max < v ? v : max;
  }
  return max;
}

MOECOMM_ROUTER_HD inline double sumExp(const float* row, int E, double max) {
  double sum = 0.0;
  for (int e = 0; e < E; ++e) sum += exp(row[e] - max);
  return sum;
}

// Per-token f64 scratch, element e at base[e * stride]: the host uses one contiguous row, the GPU
// interleaves its threads' rows (stride = threads) so that a warp's accesses coalesce.
struct Scratch {
  double* base;
  int64_t stride;
  MOECOMM_ROUTER_HD double& operator[](int64_t e) const { return base[e * stride]; }
};

// a[e]: softmax p (kSoftmax), sigmoid (kSigmoid), exp(l - max) (kTopkThenSoftmax); returns
// sum_e exp(l - max) for the softmax forms (0 for sigmoid).
MOECOMM_ROUTER_HD inline double scores(const float* row, int E, int score, double max, Scratch a) {
  double sum = 0.0;
  for (int e = 0; e < E; ++e) {
    if (score == kSigmoid) {
      a[e] = 1.0 / (1.0 + exp(-static_cast<double>(row[e])));
    } else {
      sum += a[e] = exp(row[e] - max);
    }
  }
  if (score == kSoftmax) {
    for (int e = 0; e < E; ++e) a[e] /= sum;
  }
  return sum;
}

// The per-token distribution q the aux loss averages (softmax, or sigmoid normalized to sum 1)
// from a and scores()'s sum; for sigmoid also q's derivative factor sigma'(l) / z.
MOECOMM_ROUTER_HD inline double auxQ(int score, Scratch a, double sum, double z, int e,
                                     double* sigma_prime_over_z) {
  if (score == kSigmoid) {
    *sigma_prime_over_z = a[e] * (1.0 - a[e]) / z;
    return a[e] / z;
  }
  return score == kSoftmax ? a[e] : a[e] / sum;
}

// <f, q> for the aux loss, q from a and scores()'s sum; *z gets the sigmoid normalizer (sum of a)
// that q divides by (0 for the softmax forms).
MOECOMM_ROUTER_HD inline double auxDot(int score, int E, Scratch a, double sum, const double* f,
                                       double* z) {
  *z = 0.0;
  if (score == kSigmoid) {
    for (int e = 0; e < E; ++e) *z += a[e];
  }
  double fq = 0.0, unused = 0.0;
  for (int e = 0; e < E; ++e) fq += f[e] * auxQ(score, a, sum, *z, e, &unused);
  return fq;
}

// logsumexp of the row, reusing scores()'s sum where it has one (the softmax forms).
MOECOMM_ROUTER_HD inline double logSumExp(const float* row, int E, int score, double max,
                                          const double* known_sum) {
  return max + log(known_sum != nullptr && score != kSigmoid ? *known_sum : sumExp(row, E, max));
}

// One token's loss terms: <f, q_t> for the aux loss (when f is not null) and logsumexp(l_t) for
// the z loss (when lse is not null). scratch: E entries.
MOECOMM_ROUTER_HD inline void tokenLossTerms(const Params& p, const float* row, const double* f,
                                             Scratch scratch, double* fq, double* lse) {
  const int E = p.experts;
  const double max = rowMax(row, E);
  double sum = 0.0;
  if (f != nullptr) {
    sum = scores(row, E, p.score, max, scratch);
    double z = 0.0;
    *fq = auxDot(p.score, E, scratch, sum, f, &z);
  }
  if (lse != nullptr) *lse = logSumExp(row, E, p.score, max, f != nullptr ? &sum : nullptr);
}

// d loss / d logits of token t: the routing weights' gradient (grad_w, when not null) through the
// gate, plus the aux loss's (f: the token's chunk's fractions, when not null) and the z loss's
// (when z_coeff != 0). idx/selected: the token's kept and gate-selected experts (-1: none; ids
// past E are ignored). scratch: 2E entries. out: [E], f32.
MOECOMM_ROUTER_HD inline void tokenGrad(const Params& p, int64_t t, const float* row,
                                        const int32_t* idx, const int32_t* selected,
                                        const float* grad_w, const double* f, Scratch scratch,
                                        float* out) {
  const int E = p.experts, k = p.topk;
  const Scratch a = scratch;
  const Scratch coeff{scratch.base + E * scratch.stride, scratch.stride};
  const double max = rowMax(row, E);
  const double sum = scores(row, E, p.score, max, a);
  // The weights' part: d loss / d a(e) = coeff[e], chained through a(logits) below.
  double dot = 0.0;
  if (grad_w != nullptr) {
    double norm = 1.0;
    if (p.normalized) {
      norm = 0.0;
      for (int j = 0; j < k; ++j)
        norm += selected[j] >= 0 && selected[j] < E ? a[selected[j]] : 0.0;
    }
    for (int e = 0; e < E; ++e) coeff[e] = 0.0;
    double through_norm = 0.0;
    for (int j = 0; j < k; ++j) {
      const int32_t e = idx[j];
      if (e < 0 || e >= E) continue;
      const double g = grad_w[j];
      coeff[e] += g * p.scale / norm;
      through_norm += g * p.scale * a[e] / (norm * norm);
    }
    if (p.normalized) {
      for (int j = 0; j < k; ++j) {
        if (selected[j] >= 0 && selected[j] < E) coeff[selected[j]] -= through_norm;
      }
    }
    if (p.score == kSoftmax) {
      for (int e = 0; e < E; ++e) dot += coeff[e] * a[e];
    }
  }
  // The aux loss's part: its factor and <f, q>.
  double factor = 0.0, z = 0.0, fq = 0.0;
  if (f != nullptr) {
    factor = auxFactor(p, t);
    fq = auxDot(p.score, E, a, sum, f, &z);
  }
  const double lse = p.z_coeff != 0.0 ? logSumExp(row, E, p.score, max, &sum) : 0.0;
  for (int e = 0; e < E; ++e) {
    double g = 0.0;
    if (grad_w != nullptr) {
      if (p.score == kSoftmax) {
        g += a[e] * (coeff[e] - dot);
      } else if (p.score == kSigmoid) {
        g += coeff[e] * a[e] * (1.0 - a[e]);
      } else {
        g += coeff[e] * a[e];
      }
    }
    if (f != nullptr) {
      double sig = 0.0;
      const double q = auxQ(p.score, a, sum, z, e, &sig);
      g += factor * (p.score == kSigmoid ? sig * (f[e] - fq) : q * (f[e] - fq));
    }
    if (p.z_coeff != 0.0) {
      g += p.z_coeff * 2.0 * lse * exp(row[e] - lse) / static_cast<double>(p.tokens);
    }
    out[e] = static_cast<float>(g);
  }
}

}  // namespace moecomm::routergrad
