// The router against a reference written here in f64 with plain sorts: every score function,
// group limits, bias, capacity with both drop policies, rerouting, losses and gradients (checked by
// finite differences), and bad input.
#include <gtest/gtest.h>
#include <moecomm/moecomm.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <vector>

#include "common/rank_runner.hpp"

namespace {

using namespace moecomm;

// ---------------------------------------------------------------- the reference gate
struct RefToken {
  std::vector<int> ranked;     // top-k then candidates
  std::vector<double> weight;  // per ranked entry
};

std::vector<double> rawScores(const std::vector<double>& l, ScoreFunction score) {
  const int E = static_cast<int>(l.size());
  std::vector<double> a(E);
  const double max = *std::max_element(l.begin(), l.end());
  double sum = 0;
  for (int e = 0; e < E; ++e) {
    a[e] = score == ScoreFunction::kSigmoid ? 1 / (1 + std::exp(-l[e])) : std::exp(l[e] - max);
    sum += a[e];
  }
  if (score == ScoreFunction::kSoftmax) {
    for (double& v : a) v /= sum;
  }
  return a;
}

RefToken refGate(const std::vector<double>& l, const std::vector<double>& bias,
                 const RouterOptions& o, int extra) {
  const int E = static_cast<int>(l.size());
  std::vector<double> a = rawScores(l, o.score), sel(E);
  for (int e = 0; e < E; ++e)
    sel[e] = (o.score == ScoreFunction::kTopkThenSoftmax ? l[e] : a[e]) + bias[e];
  std::vector<bool> eligible(E, true);
  if (o.num_groups > 1) {
    const int per = E / o.num_groups;
    std::vector<double> gscore(o.num_groups);
    for (int g = 0; g < o.num_groups; ++g) {
      std::vector<double> v(sel.begin() + g * per, sel.begin() + (g + 1) * per);
      std::sort(v.rbegin(), v.rend());
      gscore[g] = v[0] + (per > 1 ? v[1] : 0.0);
    }
    std::vector<int> order(o.num_groups);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int x, int y) { return gscore[x] > gscore[y]; });
    std::vector<bool> keep(o.num_groups, false);
    for (int i = 0; i < o.topk_groups; ++i) keep[order[i]] = true;
    for (int e = 0; e < E; ++e) eligible[e] = keep[e / per];
  }
  std::vector<int> order;
  for (int e = 0; e < E; ++e) {
    if (eligible[e]) order.push_back(e);
  }
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return sel[x] > sel[y]; });
  order.resize(std::min<size_t>(order.size(), o.topk + extra));
  double norm = 1;
  if (o.renormalize || o.score == ScoreFunction::kTopkThenSoftmax) {
    norm = 0;
    for (int j = 0; j < o.topk; ++j) norm += a[order[j]];
  }
  RefToken t;
  t.ranked = order;
  for (int e : order) t.weight.push_back(o.scaling_factor * a[e] / norm);
  return t;
}

struct RefRouting {
  std::vector<int> idx;
  std::vector<double> w;
  std::vector<int64_t> kept;
  int64_t dropped = 0, rerouted = 0;
};

RefRouting refRoute(const std::vector<float>& logits, int64_t T, int E,
                    const std::vector<double>& bias, const RouterOptions& o) {
  const int k = o.topk;
  const int extra = o.overflow == OverflowPolicy::kReroute ? o.reroute_candidates : 0;
  std::vector<RefToken> tokens;
  RefRouting r;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> l(logits.begin() + t * E, logits.begin() + (t + 1) * E);
    tokens.push_back(refGate(l, bias, o, extra));
    for (int j = 0; j < k; ++j) {
      r.idx.push_back(tokens.back().ranked[j]);
      r.w.push_back(tokens.back().weight[j]);
    }
  }
  r.kept.assign(E, 0);
  const int64_t cap =
      o.capacity_factor > 0
          ? std::max<int64_t>(o.min_capacity, (int64_t)std::ceil(o.capacity_factor * T * k / E))
          : INT64_MAX;
  // Claim order: (t, j), or by weight descending with (t, j) breaking ties.
  std::vector<std::pair<int64_t, int>> order;
  for (int64_t t = 0; t < T; ++t)
    for (int j = 0; j < k; ++j) order.push_back({t, j});
  if (o.drop_policy == DropPolicy::kProbability) {
    std::stable_sort(order.begin(), order.end(), [&](auto x, auto y) {
      return float(r.w[x.first * k + x.second]) > float(r.w[y.first * k + y.second]);
    });
  }
  std::vector<std::pair<int64_t, int>> overflow;
  for (auto [t, j] : order) {
    int e = r.idx[t * k + j];
    if (r.kept[e] < cap) {
      ++r.kept[e];
    } else {
      overflow.push_back({t, j});
    }
  }
  for (auto [t, j] : overflow) {
    int target = -1;
    double tw = 0;
    for (int i = 0; i < extra && target < 0; ++i) {
      if (k + i >= (int)tokens[t].ranked.size()) break;
      int e = tokens[t].ranked[k + i];
      bool used = false;
      for (int jj = 0; jj < k; ++jj) used |= r.idx[t * k + jj] == e;
      if (!used && r.kept[e] < cap) {
        target = e;
        tw = tokens[t].weight[k + i];
      }
    }
    r.idx[t * k + j] = target;
    r.w[t * k + j] = tw;
    if (target >= 0) {
      ++r.kept[target];
      ++r.rerouted;
    } else {
      ++r.dropped;
    }
  }
  return r;
}

// Logits on a 1/16 grid: exact ties happen (they test the tie-break) and other gaps are wide.
std::vector<float> gridLogits(std::mt19937& rng, int64_t T, int E, double zipf = 0) {
  std::normal_distribution<double> normal(0, 1.5);
  std::vector<float> l(T * E);
  for (int64_t t = 0; t < T; ++t)
    for (int e = 0; e < E; ++e)
      l[t * E + e] = float(std::round((normal(rng) - zipf * std::log(1.0 + e)) * 16) / 16);
  return l;
}

struct GateCase {
  const char* name;
  RouterOptions options;
  int experts;
  bool bias;
};

class RouterReference : public ::testing::TestWithParam<GateCase> {};

TEST_P(RouterReference, MatchesReference) {
  const GateCase& c = GetParam();
  const int64_t T = 203;
  const int E = c.experts;
  std::mt19937 rng(E * 31 + c.options.topk);
  for (double zipf : {0.0, 1.2}) {
    auto logits = gridLogits(rng, T, E, zipf);
    std::vector<float> bias(E, 0.0f);
    std::vector<double> bias_d(E, 0.0);
    if (c.bias) {
      for (int e = 0; e < E; ++e) bias_d[e] = bias[e] = float((e * 7 % 5) - 2) / 8.0f;
    }
    TensorView bias_view = TensorView::vector(bias.data(), DType::kF32, E);
    Routing r = Router(c.options).route(TensorView::matrix(logits.data(), DType::kF32, T, E),
                                        c.bias ? &bias_view : nullptr);
    RefRouting ref = refRoute(logits, T, E, bias_d, c.options);
    for (int64_t i = 0; i < T * c.options.topk; ++i) {
      ASSERT_EQ(r.topk_idx.as<int32_t>()[i], ref.idx[i])
          << c.name << " zipf " << zipf << " slot " << i;
      ASSERT_NEAR(r.topk_weights.as<float>()[i], ref.w[i], 1e-6 + 2e-6 * std::fabs(ref.w[i]))
          << c.name;
    }
    EXPECT_EQ(r.stats.tokens_per_expert, ref.kept) << c.name;
    EXPECT_EQ(r.stats.dropped, ref.dropped) << c.name;
    EXPECT_EQ(r.stats.rerouted, ref.rerouted) << c.name;
  }
}

RouterOptions opts(int k, ScoreFunction s, bool renorm, float scale = 1.0f) {
  RouterOptions o;
  o.topk = k;
  o.score = s;
  o.renormalize = renorm;
  o.scaling_factor = scale;
  return o;
}
RouterOptions grouped(RouterOptions o, int groups, int keep) {
  o.num_groups = groups;
  o.topk_groups = keep;
  return o;
}
RouterOptions capped(RouterOptions o, double factor, DropPolicy d, OverflowPolicy p,
                     int depth = 4) {
  o.capacity_factor = factor;
  o.drop_policy = d;
  o.overflow = p;
  o.reroute_candidates = depth;
  return o;
}

INSTANTIATE_TEST_SUITE_P(
    Gates, RouterReference,
    ::testing::Values(
        GateCase{"softmax", opts(2, ScoreFunction::kSoftmax, false), 8, false},
        GateCase{"softmax_renorm_scaled", opts(8, ScoreFunction::kSoftmax, true, 2.5f), 64, false},
        GateCase{"sigmoid", opts(4, ScoreFunction::kSigmoid, false), 16, false},
        GateCase{"sigmoid_renorm_bias", opts(8, ScoreFunction::kSigmoid, true, 2.5f), 64, true},
        GateCase{"topk_softmax", opts(2, ScoreFunction::kTopkThenSoftmax, false), 8, false},
        GateCase{"topk_softmax_bias", opts(3, ScoreFunction::kTopkThenSoftmax, false), 12, true},
        GateCase{"grouped_sigmoid", grouped(opts(8, ScoreFunction::kSigmoid, true), 8, 4), 64,
                 true},
        GateCase{"grouped_softmax", grouped(opts(2, ScoreFunction::kSoftmax, false), 4, 1), 16,
                 false},
        // Wide rows take the block-maximum filter (and, for softmax, the logit ranking).
        GateCase{"softmax_renorm_256", opts(8, ScoreFunction::kSoftmax, true), 256, false},
        GateCase{"softmax_renorm_256_k16", opts(16, ScoreFunction::kSoftmax, true), 256, false},
        GateCase{"grouped_sigmoid_256", grouped(opts(8, ScoreFunction::kSigmoid, true, 2.5f), 8, 4),
                 256, true},
        GateCase{"drop_probability",
                 capped(opts(2, ScoreFunction::kSoftmax, false), 1.0, DropPolicy::kProbability,
                        OverflowPolicy::kDrop),
                 8, false},
        GateCase{"drop_position",
                 capped(opts(2, ScoreFunction::kSoftmax, true), 1.0, DropPolicy::kPosition,
                        OverflowPolicy::kDrop),
                 8, false},
        GateCase{"reroute_probability",
                 capped(opts(2, ScoreFunction::kSoftmax, false), 1.1, DropPolicy::kProbability,
                        OverflowPolicy::kReroute),
                 8, false},
        GateCase{"reroute_position_sigmoid",
                 capped(opts(4, ScoreFunction::kSigmoid, true), 1.0, DropPolicy::kPosition,
                        OverflowPolicy::kReroute, 2),
                 16, true},
        GateCase{"reroute_grouped",
                 capped(grouped(opts(4, ScoreFunction::kSigmoid, true), 4, 2), 1.0,
                        DropPolicy::kProbability, OverflowPolicy::kReroute, 3),
                 16, false}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

TEST(Router, AllEqualLogitsPickTheLowestIds) {
  std::vector<float> logits(3 * 10, 0.5f);
  Routing r = Router(opts(4, ScoreFunction::kSoftmax, false))
                  .route(TensorView::matrix(logits.data(), DType::kF32, 3, 10));
  for (int t = 0; t < 3; ++t) {
    for (int j = 0; j < 4; ++j) {
      EXPECT_EQ(r.topk_idx.as<int32_t>()[t * 4 + j], j);
      EXPECT_FLOAT_EQ(r.topk_weights.as<float>()[t * 4 + j], 0.1f);
    }
  }
}

// Wide rows with ties take the block filter and the logit ranking: still the lowest ids, in order.
TEST(Router, TiesInWideRowsPickTheLowestIds) {
  std::vector<float> logits(2 * 256, 0.25f);
  for (int e = 100; e < 140; ++e) logits[256 + e] = 1.0f;  // token 1: a tied block in the middle
  for (bool grouped_gate : {false, true}) {
    RouterOptions o = opts(8, ScoreFunction::kSoftmax, true);
    if (grouped_gate) o = grouped(opts(8, ScoreFunction::kSigmoid, true), 8, 4);
    Routing r = Router(o).route(TensorView::matrix(logits.data(), DType::kF32, 2, 256));
    for (int j = 0; j < 8; ++j) {
      EXPECT_EQ(r.topk_idx.as<int32_t>()[j], j) << "grouped " << grouped_gate;
      EXPECT_EQ(r.topk_idx.as<int32_t>()[8 + j], 100 + j) << "grouped " << grouped_gate;
      EXPECT_FLOAT_EQ(r.topk_weights.as<float>()[j], 0.125f);
    }
  }
}

// ---------------------------------------------------------------- capacity properties
TEST(RouterCapacity, PropertiesOnSkewedInputs) {
  const int64_t T = 512;
  const int E = 16, k = 2;
  std::mt19937 rng(42);
  for (double zipf : {0.0, 1.0, 3.0}) {
    auto logits = gridLogits(rng, T, E, zipf);
    for (int t = 0; t < T && zipf == 3.0; ++t) logits[t * E + 5] += 10.0f;  // one dominant expert
    auto view = TensorView::matrix(logits.data(), DType::kF32, T, E);
    int64_t dropped_by_drop = -1;
    for (auto overflow : {OverflowPolicy::kDrop, OverflowPolicy::kReroute}) {
      for (auto drop : {DropPolicy::kProbability, DropPolicy::kPosition}) {
        RouterOptions o = capped(opts(k, ScoreFunction::kSoftmax, true), 1.25, drop, overflow, 6);
        o.min_capacity = 4;
        Routing r = Router(o).route(view);
        const int64_t cap = std::max<int64_t>(4, (int64_t)std::ceil(1.25 * T * k / E));
        EXPECT_EQ(r.stats.capacity, cap);
        std::vector<int64_t> load(E, 0);
        int64_t kept_original = 0;
        for (int64_t t = 0; t < T; ++t) {
          std::set<int> seen;
          for (int j = 0; j < k; ++j) {
            int e = r.topk_idx.as<int32_t>()[t * k + j];
            if (e < 0) {
              EXPECT_EQ(r.topk_weights.as<float>()[t * k + j], 0.0f);
              continue;
            }
            EXPECT_TRUE(seen.insert(e).second)
                << "token " << t << " visits expert " << e << " twice";
            ++load[e];
            kept_original += e == r.selected_idx.as<int32_t>()[t * k + j];
          }
        }
        for (int e = 0; e < E; ++e) EXPECT_LE(load[e], cap) << "expert " << e;
        EXPECT_EQ(load, r.stats.tokens_per_expert);
        // Every slot is kept, rerouted or dropped.
        EXPECT_EQ(kept_original + r.stats.rerouted + r.stats.dropped, T * k);
        if (overflow == OverflowPolicy::kDrop) {
          EXPECT_EQ(r.stats.rerouted, 0);
          if (drop == DropPolicy::kProbability) dropped_by_drop = r.stats.dropped;
        } else if (drop == DropPolicy::kProbability) {
          EXPECT_LE(r.stats.dropped, dropped_by_drop);
          if (dropped_by_drop > 0) {
            EXPECT_LT(r.stats.dropped, dropped_by_drop);
          }
        }
        const double mean = double(T * k - r.stats.dropped) / E;
        EXPECT_NEAR(r.stats.imbalance, *std::max_element(load.begin(), load.end()) / mean, 1e-9);
      }
    }
  }
}

TEST(RouterCapacity, ErrorPolicyNamesExpertLoadAndCapacity) {
  const int64_t T = 40;
  std::vector<float> logits(T * 4, 0.0f);
  for (int64_t t = 0; t < T; ++t) logits[t * 4 + 3] = 5.0f;
  RouterOptions o = capped(opts(1, ScoreFunction::kSoftmax, false), 1.0, DropPolicy::kPosition,
                           OverflowPolicy::kError);
  try {
    Router(o).route(TensorView::matrix(logits.data(), DType::kF32, T, 4));
    FAIL() << "overflow accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "expert 3 is over capacity: 40 assignments for a capacity of 10"),
              std::string::npos)
        << e.what();
  }
}

// ---------------------------------------------------------------- losses and gradients
// The reference loss in f64 for fixed selections: sum g * w + aux + z.
double refLoss(const std::vector<double>& l, int64_t T, int E, const Routing& r,
               const RouterOptions& o, const std::vector<float>& g, const RouterLossOptions& lo,
               RouterLosses* parts = nullptr) {
  const int k = o.topk;
  const bool normalized = o.renormalize || o.score == ScoreFunction::kTopkThenSoftmax;
  double L = 0, aux = 0, z = 0;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> row(l.begin() + t * E, l.begin() + (t + 1) * E);
    auto a = rawScores(row, o.score);
    double norm = 1;
    if (normalized) {
      norm = 0;
      for (int j = 0; j < k; ++j) {
        int e = r.selected_idx.as<int32_t>()[t * k + j];
        if (e >= 0) norm += a[e];
      }
    }
    for (int j = 0; j < k; ++j) {
      int e = r.topk_idx.as<int32_t>()[t * k + j];
      if (e >= 0) L += g[t * k + j] * o.scaling_factor * a[e] / norm;
    }
    double max = *std::max_element(row.begin(), row.end()), s = 0;
    for (double v : row) s += std::exp(v - max);
    z += lo.z_loss_coeff * std::pow(max + std::log(s), 2) / T;
  }
  const int64_t len = lo.aux_seq_len > 0 ? lo.aux_seq_len : T;
  int64_t chunks = (T + len - 1) / len;
  for (int64_t b = 0; b < T; b += len) {
    const int64_t end = std::min(T, b + len);
    std::vector<double> f(E, 0), P(E, 0);
    double total = 0;
    for (int64_t a = b * k; a < end * k; ++a) {
      int e = r.topk_idx.as<int32_t>()[a];
      if (e >= 0) f[e] += 1, total += 1;
    }
    for (int64_t t = b; t < end; ++t) {
      std::vector<double> row(l.begin() + t * E, l.begin() + (t + 1) * E);
      std::vector<double> q = o.score == ScoreFunction::kSigmoid
                                  ? rawScores(row, ScoreFunction::kSigmoid)
                                  : rawScores(row, ScoreFunction::kSoftmax);
      double zq = std::accumulate(q.begin(), q.end(), 0.0);
      for (int e = 0; e < E; ++e) P[e] += q[e] / zq / double(end - b);
    }
    double s = 0;
    for (int e = 0; e < E; ++e) s += (total > 0 ? f[e] / total : 0) * P[e];
    aux += lo.aux_loss_coeff * E * s / chunks;
  }
  if (parts) *parts = {aux, z};
  return L + aux + z;
}

struct GradCase {
  const char* name;
  RouterOptions options;
  RouterLossOptions losses;
};

class RouterGradient : public ::testing::TestWithParam<GradCase> {};

TEST_P(RouterGradient, MatchesFiniteDifferencesInF64) {
  const GradCase& c = GetParam();
  const int64_t T = 24;
  const int E = 8, k = c.options.topk;
  std::mt19937 rng(77);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> logits(T * E);
  for (float& v : logits) v = normal(rng);
  std::vector<float> g(T * k);
  for (float& v : g) v = normal(rng);
  Router router(c.options);
  auto view = TensorView::matrix(logits.data(), DType::kF32, T, E);
  Routing r = router.route(view);
  std::vector<float> grad(T * E);
  TensorView gw = TensorView::matrix(g.data(), DType::kF32, T, k);
  router.backward(view, r, &gw, c.losses, TensorView::matrix(grad.data(), DType::kF32, T, E));

  std::vector<double> l(logits.begin(), logits.end());
  RouterLosses ref_parts;
  refLoss(l, T, E, r, c.options, g, c.losses, &ref_parts);
  RouterLosses parts = router.losses(view, r, c.losses);
  EXPECT_NEAR(parts.aux_loss, ref_parts.aux_loss, 1e-9 + 1e-6 * std::fabs(ref_parts.aux_loss));
  EXPECT_NEAR(parts.z_loss, ref_parts.z_loss, 1e-9 + 1e-6 * std::fabs(ref_parts.z_loss));
  const double h = 1e-5;
  for (int64_t i = 0; i < T * E; ++i) {
    auto plus = l, minus = l;
    plus[i] += h;
    minus[i] -= h;
    double fd = (refLoss(plus, T, E, r, c.options, g, c.losses) -
                 refLoss(minus, T, E, r, c.options, g, c.losses)) /
                (2 * h);
    ASSERT_NEAR(grad[i], fd, 2e-5 + 1e-4 * std::fabs(fd)) << c.name << " logit " << i;
  }
}

RouterLossOptions lossOpts(double aux, int64_t seq, double z) {
  RouterLossOptions lo;
  lo.aux_loss_coeff = aux;
  lo.aux_seq_len = seq;
  lo.z_loss_coeff = z;
  return lo;
}

INSTANTIATE_TEST_SUITE_P(
    Scores, RouterGradient,
    ::testing::Values(
        GradCase{"softmax", opts(2, ScoreFunction::kSoftmax, false, 1.5f), lossOpts(0, 0, 0)},
        GradCase{"softmax_renorm_losses", opts(3, ScoreFunction::kSoftmax, true),
                 lossOpts(0.1, 0, 0.01)},
        GradCase{"sigmoid", opts(2, ScoreFunction::kSigmoid, false), lossOpts(0.1, 0, 0)},
        GradCase{"sigmoid_renorm_seq_aux", opts(3, ScoreFunction::kSigmoid, true, 2.5f),
                 lossOpts(0.05, 5, 0.01)},
        GradCase{"topk_softmax", opts(2, ScoreFunction::kTopkThenSoftmax, false),
                 lossOpts(0.1, 8, 0.001)},
        GradCase{"capacity_reroute",
                 capped(opts(2, ScoreFunction::kSoftmax, true), 0.75, DropPolicy::kProbability,
                        OverflowPolicy::kReroute),
                 lossOpts(0.1, 0, 0)},
        GradCase{"capacity_drop_sigmoid",
                 capped(opts(3, ScoreFunction::kSigmoid, true), 0.5, DropPolicy::kPosition,
                        OverflowPolicy::kDrop),
                 lossOpts(0, 0, 0.01)}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

TEST(RouterBalance, BiasUpdateAndGlobalLoad) {
  std::vector<float> bias = {0.0f, 0.0f, 0.0f, 0.0f};
  updateExpertBias(TensorView::vector(bias.data(), DType::kF32, 4), {10, 2, 4, 0}, 0.01f);
  EXPECT_EQ(bias, (std::vector<float>{-0.01f, 0.01f, 0.0f, 0.01f}));  // mean 4
  EXPECT_THROW(
      updateExpertBias(TensorView::vector(bias.data(), DType::kF32, 3), {1, 2, 3, 4}, 0.1f), Error);

  moecomm::testing::runRanks(3, [](moecomm::testing::RankWorld& world, int rank) {
    Group group = world.group(rank, {6, 8, DType::kF32, 2, 10000, "local"});
    LoadStats local;
    local.tokens_per_expert = {rank, 1, 0, 2 * rank, 5, 7};
    EXPECT_EQ(globalLoad(group, local), (std::vector<int64_t>{3, 3, 0, 6, 15, 21}));
  });
}

TEST(RouterBalance, BiasSteersSelectionButNotWeights) {
  std::vector<float> logits = {2.0f, 1.0f, 0.0f, -1.0f};
  std::vector<float> bias = {0.0f, 0.0f, 0.0f, 5.0f};
  auto bv = TensorView::vector(bias.data(), DType::kF32, 4);
  Routing r = Router(opts(1, ScoreFunction::kSigmoid, false))
                  .route(TensorView::matrix(logits.data(), DType::kF32, 1, 4), &bv);
  EXPECT_EQ(r.topk_idx.as<int32_t>()[0], 3);
  EXPECT_NEAR(r.topk_weights.as<float>()[0], 1.0 / (1.0 + std::exp(1.0)), 1e-7);
}

// ---------------------------------------------------------------- bad input
TEST(RouterBadInput, ClearErrors) {
  auto expectError = [](auto&& fn, const std::string& text) {
    try {
      fn();
      ADD_FAILURE() << "accepted; expected an error containing: " << text;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), StatusCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  std::vector<float> logits(4 * 8, 0.0f);
  auto view = TensorView::matrix(logits.data(), DType::kF32, 4, 8);
  expectError([] { Router(opts(0, ScoreFunction::kSoftmax, false)); }, "topk must be >= 1");
  expectError([&] { Router(opts(9, ScoreFunction::kSoftmax, false)).route(view); },
              "exceeds the 8 experts");
  expectError([&] { Router(grouped(opts(5, ScoreFunction::kSigmoid, false), 4, 2)).route(view); },
              "exceeds the 4 experts of the 2 allowed groups");
  expectError([&] { Router(grouped(opts(2, ScoreFunction::kSigmoid, false), 4, 5)); },
              "topk_groups=5");
  expectError([&] { Router(grouped(opts(2, ScoreFunction::kSigmoid, false), 3, 1)).route(view); },
              "does not divide");
  RouterOptions negative = opts(2, ScoreFunction::kSoftmax, false);
  negative.capacity_factor = -1.0;
  expectError([&] { Router{negative}; }, "capacity_factor must be >= 0");
  std::vector<float> bias(7, 0.0f);
  auto bv = TensorView::vector(bias.data(), DType::kF32, 7);
  expectError([&] { Router(opts(2, ScoreFunction::kSoftmax, false)).route(view, &bv); },
              "expected f32[8]");
  logits[2 * 8 + 5] = std::nanf("");
  expectError([&] { Router(opts(2, ScoreFunction::kSoftmax, false)).route(view); },
              "logits[2, 5] = nan");
  logits[2 * 8 + 5] = INFINITY;
  expectError([&] { Router(opts(2, ScoreFunction::kSigmoid, false)).route(view); },
              "is not finite");
}

// The gate checks finiteness as it reads each row: every score function, row width (whole
// vectors or not) and position of the bad value must still be named exactly.
TEST(RouterBadInput, NonFiniteLogitsNamedForEveryGate) {
  struct Gate {
    const char* name;
    RouterOptions options;
    bool bias;
  };
  for (int experts : {8, 13, 64, 256}) {
    RouterOptions deepseek = opts(4, ScoreFunction::kSigmoid, true);
    if (experts % 4 == 0) deepseek = grouped(deepseek, 4, 2);
    const Gate gates[] = {
        {"softmax renormalized", opts(4, ScoreFunction::kSoftmax, true), false},
        {"softmax with bias", opts(4, ScoreFunction::kSoftmax, false), true},
        {"sigmoid", opts(4, ScoreFunction::kSigmoid, false), false},
        {"deepseek", deepseek, true},
        {"topk then softmax", opts(2, ScoreFunction::kTopkThenSoftmax, false), false},
    };
    const int tokens = 37;
    std::vector<float> bias(static_cast<size_t>(experts), 0.01f);
    auto bias_view = TensorView::vector(bias.data(), DType::kF32, experts);
    for (const Gate& g : gates) {
      const Router router(g.options);
      for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
        for (auto [t, e] :
             {std::pair{0, 0}, std::pair{17, experts / 2}, std::pair{36, experts - 1}}) {
          std::vector<float> logits(static_cast<size_t>(tokens * experts), 0.5f);
          logits[static_cast<size_t>(t * experts + e)] = bad;
          logits[static_cast<size_t>(tokens * experts - 1)] =
              t == 36 ? bad : INFINITY;  // a later one
          auto view = TensorView::matrix(logits.data(), DType::kF32, tokens, experts);
          std::ostringstream want;
          want << "logits[" << t << ", " << e << "] = ";
          try {
            router.route(view, g.bias ? &bias_view : nullptr);
            ADD_FAILURE() << g.name << " E=" << experts << ": accepted " << bad;
          } catch (const Error& error) {
            EXPECT_EQ(error.code(), StatusCode::kInvalidArgument);
            EXPECT_NE(std::string(error.what()).find(want.str()), std::string::npos)
                << g.name << " E=" << experts << ": " << error.what();
          }
        }
      }
    }
  }
  std::vector<float> logits(4 * 8, 0.0f), bias(8, 0.0f);
  bias[3] = std::nanf("");
  auto view = TensorView::matrix(logits.data(), DType::kF32, 4, 8);
  auto bias_view = TensorView::vector(bias.data(), DType::kF32, 8);
  try {
    Router(opts(2, ScoreFunction::kSigmoid, false)).route(view, &bias_view);
    ADD_FAILURE() << "a NaN bias was accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("expert_bias[3] is not finite"), std::string::npos)
        << error.what();
  }
}

TEST(Router, ZeroTokensGiveEmptyRouting) {
  Routing r = Router(opts(2, ScoreFunction::kSoftmax, true))
                  .route(TensorView::matrix(nullptr, DType::kF32, 0, 8));
  EXPECT_EQ(r.topk_idx.dim(0), 0);
  EXPECT_EQ(r.topk_weights.dim(1), 2);
  EXPECT_EQ(r.stats.tokens_per_expert, std::vector<int64_t>(8, 0));
}

}  // namespace

namespace {

using namespace moecomm;

// Without capacity, routing is per token: routing all tokens at once equals routing any split of
// them (as ranks would), and two runs give identical bits.
TEST(RouterDeterminism, SameRoutingForEverySplitAndRun) {
  const int64_t T = 96;
  const int E = 32;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(T * E);
  for (float& v : logits) v = normal(rng);
  RouterOptions o;
  o.topk = 4;
  o.score = ScoreFunction::kSigmoid;
  o.renormalize = true;
  o.num_groups = 4;
  o.topk_groups = 2;
  Router router(o);
  Routing whole = router.route(TensorView::matrix(logits.data(), DType::kF32, T, E));
  Routing again = router.route(TensorView::matrix(logits.data(), DType::kF32, T, E));
  ASSERT_EQ(
      std::memcmp(whole.topk_weights.data(), again.topk_weights.data(), whole.topk_weights.bytes()),
      0);
  for (int parts : {2, 3, 8}) {
    const int64_t per = (T + parts - 1) / parts;
    for (int64_t begin = 0; begin < T; begin += per) {
      const int64_t n = std::min(per, T - begin);
      Routing part = router.route(TensorView::matrix(logits.data() + begin * E, DType::kF32, n, E));
      ASSERT_EQ(
          std::memcmp(part.topk_idx.data(), whole.topk_idx.as<int32_t>() + begin * 4, n * 4 * 4),
          0);
      ASSERT_EQ(std::memcmp(part.topk_weights.data(), whole.topk_weights.as<float>() + begin * 4,
                            n * 4 * 4),
                0);
    }
  }
}

}  // namespace
