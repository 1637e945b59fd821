// The whole MoE layer on 1, 2, 3, 4 and 8 ranks against a dense single-process reference in f64
// (each token through its k experts, weighted and summed, plus the shared expert), forward and
// backward; and its gradients against finite differences of that reference on a small case.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/rank_runner.hpp"
#include "common/reference.hpp"

namespace {

using namespace moecomm;
using namespace moecomm::testing;

// The layer's parameters, read once from a 1-rank layer (initWeights draws each global expert
// from (seed, expert), so every rank count holds the same model).
struct Model {
  int H = 0, F = 0, E = 0, k = 0, SF = 0;
  bool swiglu = true;
  std::vector<double> wr, w_in, w_out, s_in, s_out;  // [H,E], [E,H,Fin], [E,F,H], shared
  int fin() const { return swiglu ? 2 * F : F; }
  int sfin() const { return swiglu ? 2 * SF : SF; }
};

std::vector<double> copyOf(const Tensor& t) {
  return {t.as<float>(), t.as<float>() + t.numel()};
}

Model readModel(const GroupConfig& g, const MoeLayerConfig& c, uint64_t seed) {
  LocalWorld world(1);
  GroupConfig one = g;
  one.transport = "local";
  Group group = Group::create(world, 0, one);
  MoeLayer layer(group, c);
  layer.initWeights(seed);
  Model m;
  m.H = g.hidden;
  m.F = c.ffn;
  m.E = g.num_experts;
  m.k = g.topk;
  m.SF = c.shared_ffn;
  m.swiglu = c.activation == Activation::kSwiGLU;
  m.wr = copyOf(layer.routerWeight());
  m.w_in = copyOf(layer.experts().w_in());
  m.w_out = copyOf(layer.experts().w_out());
  if (layer.sharedExpert()) {
    m.s_in = copyOf(layer.sharedExpert()->w_in());
    m.s_out = copyOf(layer.sharedExpert()->w_out());
  }
  return m;
}

double silu(double v) {
  return v / (1 + std::exp(-v));
}
double gelu(double v) {
  return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
}

// One MLP (expert e of weights w_in [*, H, Fin], w_out [*, F, H]) on one row, and its backward:
// given dy, adds into dx and the weight gradients.
struct Mlp {
  const std::vector<double>& w_in;
  const std::vector<double>& w_out;
  int H, F;
  bool swiglu;
  int fin() const { return swiglu ? 2 * F : F; }

  std::vector<double> pre(int e, const double* x) const {
    std::vector<double> p(fin(), 0);
    for (int j = 0; j < fin(); ++j) {
      for (int i = 0; i < H; ++i) p[j] += x[i] * w_in[(size_t(e) * H + i) * fin() + j];
    }
    return p;
  }
  std::vector<double> act(const std::vector<double>& p) const {
    std::vector<double> h(F);
    for (int j = 0; j < F; ++j) h[j] = swiglu ? silu(p[j]) * p[F + j] : gelu(p[j]);
    return h;
  }
  std::vector<double> forward(int e, const double* x) const {
    const auto h = act(pre(e, x));
    std::vector<double> y(H, 0);
    for (int o = 0; o < H; ++o) {
      for (int j = 0; j < F; ++j) y[o] += h[j] * w_out[(size_t(e) * F + j) * H + o];
    }
    return y;
  }
  void backward(int e, const double* x, const double* dy, double* dx, double* g_in,
                double* g_out) const {
    const auto p = pre(e, x);
    const auto h = act(p);
    std::vector<double> dh(F, 0), dp(fin());
    for (int j = 0; j < F; ++j) {
      for (int o = 0; o < H; ++o) {
        dh[j] += dy[o] * w_out[(size_t(e) * F + j) * H + o];
        if (g_out) g_out[(size_t(e) * F + j) * H + o] += h[j] * dy[o];
      }
    }
    for (int j = 0; j < F; ++j) {
      if (swiglu) {
        const double s = 1 / (1 + std::exp(-p[j]));
        dp[j] = dh[j] * p[F + j] * s * (1 + p[j] * (1 - s));
        dp[F + j] = dh[j] * silu(p[j]);
      } else {
        const double cdf = 0.5 * (1 + std::erf(p[j] / std::sqrt(2.0)));
        dp[j] = dh[j] * (cdf + p[j] * std::exp(-0.5 * p[j] * p[j]) / std::sqrt(2 * M_PI));
      }
    }
    for (int i = 0; i < H; ++i) {
      for (int j = 0; j < fin(); ++j) {
        dx[i] += dp[j] * w_in[(size_t(e) * H + i) * fin() + j];
        if (g_in) g_in[(size_t(e) * H + i) * fin() + j] += x[i] * dp[j];
      }
    }
  }
};

struct Case {
  int ranks;
  Activation activation;
  int shared_ffn;
  DType dtype;
  double capacity_factor;               // > 0: the router drops what overflows
  bool sigmoid_groups_reroute = false;  // DeepSeek-style gate, overflow rerouted instead of dropped
};

std::string caseName(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  char name[96];
  std::snprintf(name, sizeof(name), "r%d_%s_shared%d_%s_cap%d%s", c.ranks,
                c.activation == Activation::kSwiGLU ? "swiglu" : "gelu", c.shared_ffn,
                dtypeName(c.dtype), int(c.capacity_factor * 10),
                c.sigmoid_groups_reroute ? "_sigmoid_groups_reroute" : "");
  return name;
}

// Every rank's tokens, drawn from the case, so any rank can build every rank's reference.
std::vector<std::vector<float>> allInputs(const Case& c, int H) {
  std::vector<std::vector<float>> xs;
  std::mt19937 rng(1234 + c.ranks);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int r = 0; r < c.ranks; ++r) {
    std::vector<float> x(size_t(5 + 3 * r) * H);
    for (float& v : x) v = normal(rng);
    xs.push_back(std::move(x));
  }
  return xs;
}

class MoeLayerRanks : public ::testing::TestWithParam<Case> {};

TEST_P(MoeLayerRanks, ForwardAndBackwardMatchTheDenseReference) {
  const Case c = GetParam();
  const int E = 24, H = 16, k = 2;
  GroupConfig gc{E, H, c.dtype, k, 20000, "local"};
  MoeLayerConfig lc;
  lc.ffn = 12;
  lc.activation = c.activation;
  lc.shared_ffn = c.shared_ffn;
  lc.router.topk = k;
  lc.router.capacity_factor = c.capacity_factor;
  if (c.sigmoid_groups_reroute) {
    lc.router.score = ScoreFunction::kSigmoid;
    lc.router.renormalize = true;
    lc.router.num_groups = 4;
    lc.router.topk_groups = 2;
    lc.router.overflow = OverflowPolicy::kReroute;
  }
  lc.losses.aux_loss_coeff = 0.01;
  lc.dispatch.expert_alignment = 4;
  const uint64_t seed = 99;
  const Model m = readModel(gc, lc, seed);
  const auto xs = allInputs(c, H);
  const Mlp experts{m.w_in, m.w_out, H, m.F, m.swiglu};
  const Mlp shared{m.s_in, m.s_out, H, m.SF, m.swiglu};
  const Router router(lc.router);

  // The reference for every rank: logits, routing, the global load, then outputs and gradients.
  struct RankRef {
    std::vector<float> logits;
    Routing routing;
    std::vector<double> out, grad_x, grad_wr, grad_s_in, grad_s_out;
    std::vector<float> grad_out;
  };
  std::vector<RankRef> refs(c.ranks);
  std::vector<int64_t> global(E, 0);
  for (int r = 0; r < c.ranks; ++r) {
    const int64_t T = int64_t(xs[r].size()) / H;
    RankRef& ref = refs[r];
    ref.logits.assign(size_t(T) * E, 0.0f);
    for (int64_t t = 0; t < T; ++t) {
      for (int e = 0; e < E; ++e) {
        double v = 0;
        for (int i = 0; i < H; ++i) v += double(xs[r][t * H + i]) * m.wr[size_t(i) * E + e];
        ref.logits[t * E + e] = float(v);
      }
    }
    ref.routing = router.route(TensorView::matrix(ref.logits.data(), DType::kF32, T, E));
    for (int e = 0; e < E; ++e) global[e] += ref.routing.stats.tokens_per_expert[e];
  }
  int64_t dropped = 0;
  for (const RankRef& ref : refs) dropped += ref.routing.stats.dropped;
  int64_t rerouted = 0;
  for (const RankRef& ref : refs) rerouted += ref.routing.stats.rerouted;
  if (c.capacity_factor > 0 && !c.sigmoid_groups_reroute) {
    EXPECT_GT(dropped, 0) << "the capacity case must drop some slots";
  }
  if (c.sigmoid_groups_reroute) {
    EXPECT_GT(rerouted, 0) << "the reroute case must move some slots";
  }
  std::vector<double> grad_w_in(m.w_in.size(), 0), grad_w_out(m.w_out.size(), 0);
  for (int r = 0; r < c.ranks; ++r) {
    const int64_t T = int64_t(xs[r].size()) / H;
    RankRef& ref = refs[r];
    std::mt19937 rng(77 + r);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    ref.grad_out.resize(size_t(T) * H);
    for (float& v : ref.grad_out) v = normal(rng);
    ref.out.assign(size_t(T) * H, 0);
    ref.grad_x.assign(size_t(T) * H, 0);
    ref.grad_wr.assign(size_t(H) * E, 0);
    ref.grad_s_in.assign(m.s_in.size(), 0);
    ref.grad_s_out.assign(m.s_out.size(), 0);
    std::vector<float> grad_w(size_t(T) * k, 0.0f);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> x(H), xw(H), g(H);
      for (int i = 0; i < H; ++i) {
        x[i] = xs[r][t * H + i];
        xw[i] = roundTo(c.dtype, xs[r][t * H + i]);  // what the routed experts see
        g[i] = ref.grad_out[t * H + i];
      }
      for (int j = 0; j < k; ++j) {
        const int e = ref.routing.topk_idx.as<int32_t>()[t * k + j];
        if (e < 0) continue;
        const double w = ref.routing.topk_weights.as<float>()[t * k + j];
        const auto y = experts.forward(e, xw.data());
        double dot = 0;
        std::vector<double> dy(H), dxw(H, 0);
        for (int o = 0; o < H; ++o) {
          ref.out[t * H + o] += w * y[o];
          dot += g[o] * y[o];
          dy[o] = w * g[o];
        }
        grad_w[t * k + j] = float(dot);
        experts.backward(e, xw.data(), dy.data(), dxw.data(), grad_w_in.data(), grad_w_out.data());
        for (int i = 0; i < H; ++i) ref.grad_x[t * H + i] += dxw[i];
      }
      if (m.SF > 0) {
        const auto y = shared.forward(0, x.data());
        for (int o = 0; o < H; ++o) ref.out[t * H + o] += y[o];
        shared.backward(0, x.data(), g.data(), ref.grad_x.data() + t * H, ref.grad_s_in.data(),
                        ref.grad_s_out.data());
      }
    }
    // The router's part: the library's gate backward (tested on its own), then the GEMM in f64.
    std::vector<float> grad_logits(size_t(T) * E);
    const TensorView gw = TensorView::matrix(grad_w.data(), DType::kF32, T, k);
    router.backward(TensorView::matrix(ref.logits.data(), DType::kF32, T, E), ref.routing, &gw,
                    lc.losses, TensorView::matrix(grad_logits.data(), DType::kF32, T, E), &global);
    for (int64_t t = 0; t < T; ++t) {
      for (int e = 0; e < E; ++e) {
        for (int i = 0; i < H; ++i) {
          ref.grad_wr[size_t(i) * E + e] += xs[r][t * H + i] * double(grad_logits[t * E + e]);
          ref.grad_x[t * H + i] += grad_logits[t * E + e] * m.wr[size_t(i) * E + e];
        }
      }
    }
  }

  const double tol = c.dtype == DType::kBF16 ? 2e-2 : 2e-4;
  auto near = [&](double got, double want, const char* what, size_t i) {
    ASSERT_NEAR(got, want, tol * (1 + std::fabs(want))) << what << " [" << i << "]";
  };
  runRanks(c.ranks, [&](RankWorld& world, int rank) {
    Group group = world.group(rank, gc);
    MoeLayer layer(group, lc);
    layer.initWeights(seed);
    const RankRef& ref = refs[rank];
    const int64_t T = int64_t(xs[rank].size()) / H;
    MoeOutput fwd =
        layer.forward(TensorView::matrix(const_cast<float*>(xs[rank].data()), DType::kF32, T, H));
    for (size_t i = 0; i < ref.out.size(); ++i) near(fwd.out.as<float>()[i], ref.out[i], "out", i);
    EXPECT_EQ(fwd.stats.dropped, ref.routing.stats.dropped);
    const RouterLosses want =
        router.losses(TensorView::matrix(const_cast<float*>(ref.logits.data()), DType::kF32, T, E),
                      ref.routing, lc.losses, &global);
    EXPECT_NEAR(fwd.losses.aux_loss, want.aux_loss, 1e-6);

    Tensor grad_x = layer.backward(
        TensorView::matrix(const_cast<float*>(ref.grad_out.data()), DType::kF32, T, H));
    for (size_t i = 0; i < ref.grad_x.size(); ++i) {
      near(grad_x.as<float>()[i], ref.grad_x[i], "grad_x", i);
    }
    for (size_t i = 0; i < ref.grad_wr.size(); ++i) {
      near(layer.gradRouterWeight().as<float>()[i], ref.grad_wr[i], "grad router", i);
    }
    // This rank's slice of the global expert gradients.
    const size_t in_per = m.w_in.size() / E, out_per = m.w_out.size() / E;
    const size_t first = size_t(group.firstLocalExpert());
    for (size_t i = 0; i < in_per * group.localExperts(); ++i) {
      near(layer.experts().grad_w_in().as<float>()[i], grad_w_in[first * in_per + i], "grad w_in",
           i);
    }
    for (size_t i = 0; i < out_per * group.localExperts(); ++i) {
      near(layer.experts().grad_w_out().as<float>()[i], grad_w_out[first * out_per + i],
           "grad w_out", i);
    }
    if (m.SF > 0) {
      for (size_t i = 0; i < ref.grad_s_in.size(); ++i) {
        near(layer.sharedExpert()->grad_w_in().as<float>()[i], ref.grad_s_in[i], "shared in", i);
      }
    }
  });
}

std::vector<Case> allCases() {
  std::vector<Case> cases;
  for (int ranks : {1, 2, 3, 4, 8})
    cases.push_back({ranks, Activation::kSwiGLU, 0, DType::kF32, 0});
  cases.push_back({2, Activation::kGelu, 8, DType::kF32, 0});
  cases.push_back({4, Activation::kSwiGLU, 8, DType::kBF16, 0});
  cases.push_back({3, Activation::kSwiGLU, 0, DType::kF32, 0.5});  // capacity drops slots
  cases.push_back({2, Activation::kGelu, 0, DType::kF32, 0.3});
  cases.push_back({4, Activation::kSwiGLU, 8, DType::kF32, 0.6, true});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Sweep, MoeLayerRanks, ::testing::ValuesIn(allCases()), caseName);

// ---- adversarial routings: every token on one expert (via the bias), and experts with none.
TEST(MoeLayer, AllTokensOnOneExpertAndIdleExperts) {
  runRanks(2, [](RankWorld& world, int rank) {
    Group group = world.group(rank, {8, 8, DType::kF32, 1, 20000, "local"});
    MoeLayerConfig lc;
    lc.ffn = 6;
    lc.router.topk = 1;
    MoeLayer layer(group, lc);
    layer.initWeights(5);
    layer.expertBias().as<float>()[5] = 1000.0f;  // expert 5 (on rank 1) wins every token
    std::vector<float> x(7 * 8);
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.3f * float(i) + float(rank));
    MoeOutput fwd = layer.forward(TensorView::matrix(x.data(), DType::kF32, 7, 8));
    EXPECT_EQ(fwd.stats.tokens_per_expert[5], 7);
    std::vector<float> g(7 * 8, 1.0f);
    Tensor gx = layer.backward(TensorView::matrix(g.data(), DType::kF32, 7, 8));
    // Rank 0's experts saw nothing: their gradients stay exactly zero.
    if (rank == 0) {
      const Tensor& gw = layer.experts().grad_w_in();
      for (int64_t i = 0; i < gw.numel(); ++i) ASSERT_EQ(gw.as<float>()[i], 0.0f);
    } else {
      double sum = 0;
      const Tensor& gw = layer.experts().grad_w_out();
      for (int64_t i = 0; i < gw.numel(); ++i) sum += std::fabs(gw.as<float>()[i]);
      EXPECT_GT(sum, 0.0);
    }
    for (int64_t i = 0; i < gx.numel(); ++i) ASSERT_TRUE(std::isfinite(gx.as<float>()[i]));
  });
}

// A sync-free dispatch leaves the counts on the device; the layer's experts then run over each
// expert's whole static segment. Padding rows are zeros with weight 0, so the outputs and every
// gradient match the padded layer's (to GEMM rounding: the weight gradients sum over more rows).
TEST(MoeLayer, SyncFreeDispatchGivesThePaddedLayersResults) {
  runRanks(2, [](RankWorld& world, int rank) {
    Group group = world.group(rank, {8, 8, DType::kF32, 2, 20000, "local"});
    MoeLayerConfig lc;
    lc.ffn = 6;
    lc.router.topk = 2;
    lc.dispatch.expert_capacity = 5;
    lc.dispatch.pad_to_capacity = true;
    lc.dispatch.expert_alignment = 4;
    MoeLayer padded(group, lc);
    lc.dispatch.sync_free = true;
    MoeLayer sync_free(group, lc);
    padded.initWeights(17);
    sync_free.initWeights(17);
    const int64_t T = 9;
    std::vector<float> x(T * 8), g(T * 8);
    for (size_t i = 0; i < x.size(); ++i) {
      x[i] = std::sin(0.7f * float(i) + float(rank));
      g[i] = std::cos(0.3f * float(i) - float(rank));
    }
    const auto xv = TensorView::matrix(x.data(), DType::kF32, T, 8);
    const auto gv = TensorView::matrix(g.data(), DType::kF32, T, 8);
    const MoeOutput a = padded.forward(xv);
    const Tensor ga = padded.backward(gv);
    const MoeOutput b = sync_free.forward(xv);
    const Tensor gb = sync_free.backward(gv);
    const auto near = [&](const Tensor& want, const Tensor& got, const char* what) {
      ASSERT_EQ(want.numel(), got.numel()) << what;
      double scale = 0;
      for (int64_t i = 0; i < want.numel(); ++i) {
        scale = std::max(scale, double(std::fabs(want.as<float>()[i])));
      }
      EXPECT_GT(scale, 0.0) << what << " is all zeros: the case checks nothing";
      for (int64_t i = 0; i < want.numel(); ++i) {
        ASSERT_NEAR(want.as<float>()[i], got.as<float>()[i], 1e-5 * scale)
            << what << "[" << i << "] on rank " << rank;
      }
    };
    near(a.out, b.out, "out");
    near(ga, gb, "grad_x");
    near(padded.experts().grad_w_in(), sync_free.experts().grad_w_in(), "grad_w_in");
    near(padded.experts().grad_w_out(), sync_free.experts().grad_w_out(), "grad_w_out");
  });
}

// compute_dtype reaches the routed and the shared experts: the bf16 layer's outputs and
// gradients stay within bf16 rounding of the f32 layer's, and are not the f32 layer's.
TEST(MoeLayer, Bf16ComputeReachesEveryExpert) {
  runRanks(2, [](RankWorld& world, int rank) {
    Group group = world.group(rank, {8, 32, DType::kBF16, 2, 20000, "local"});
    MoeLayerConfig lc;
    lc.ffn = 16;
    lc.shared_ffn = 8;
    lc.router.topk = 2;
    MoeLayer f32(group, lc);
    lc.compute_dtype = DType::kBF16;
    MoeLayer bf16(group, lc);
    EXPECT_EQ(bf16.experts().config().compute_dtype, DType::kBF16);
    ASSERT_NE(bf16.sharedExpert(), nullptr);
    EXPECT_EQ(bf16.sharedExpert()->config().compute_dtype, DType::kBF16);
    f32.initWeights(3);
    bf16.initWeights(3);
    std::mt19937 rng(static_cast<unsigned>(40 + rank));
    std::normal_distribution<float> normal;
    std::vector<float> x(21 * 32), g(21 * 32);
    for (float& v : x) v = normal(rng);
    for (float& v : g) v = normal(rng);
    const TensorView xv = TensorView::matrix(x.data(), DType::kF32, 21, 32);
    const TensorView gv = TensorView::matrix(g.data(), DType::kF32, 21, 32);
    // Both layers route alike: the router GEMM is f32 in both.
    const MoeOutput a = f32.forward(xv);
    const MoeOutput b = bf16.forward(xv);
    EXPECT_EQ(a.stats.tokens_per_expert, b.stats.tokens_per_expert);
    const Tensor ga = f32.backward(gv);
    const Tensor gb = bf16.backward(gv);
    auto compare = [&](const Tensor& want, const Tensor& got, const char* what) {
      double worst = 0, largest = 0;
      for (int64_t i = 0; i < want.numel(); ++i) {
        worst = std::max(worst, double(std::fabs(want.as<float>()[i] - got.as<float>()[i])));
        largest = std::max(largest, double(std::fabs(want.as<float>()[i])));
      }
      EXPECT_GT(worst, 0.0) << what << ": bf16 compute gave the f32 result bit for bit";
      EXPECT_LT(worst, 3e-2 * largest) << what << ": further from f32 than bf16 rounding goes";
    };
    compare(a.out, b.out, "output");
    compare(ga, gb, "grad_x");
    compare(f32.experts().grad_w_in(), bf16.experts().grad_w_in(), "experts' grad_w_in");
    compare(f32.sharedExpert()->grad_w_out(), bf16.sharedExpert()->grad_w_out(),
            "shared grad_w_out");
  });
}

TEST(MoeLayer, BadConfigAndCallOrderAreClearErrors) {
  runRanks(1, [](RankWorld& world, int rank) {
    Group group = world.group(rank, {4, 8, DType::kF32, 2, 20000, "local"});
    MoeLayerConfig lc;
    lc.ffn = 4;
    lc.router.topk = 1;  // the group says 2
    EXPECT_THROW(MoeLayer(group, lc), Error);
    lc.router.topk = 2;
    MoeLayer layer(group, lc);
    std::vector<float> g(8, 0.0f);
    try {
      layer.backward(TensorView::matrix(g.data(), DType::kF32, 1, 8));
      FAIL();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), StatusCode::kInvalidUsage);
    }
    std::vector<float> x(2 * 7, 0.0f);
    EXPECT_THROW(layer.forward(TensorView::matrix(x.data(), DType::kF32, 2, 7)), Error);
  });
}

// ---- finite differences in f64 of the reference loss L = <grad_out, out>, on one rank, against
// the layer's analytic gradients (softmax top-2 gate, no renormalization, SwiGLU, shared expert).
struct Small {
  int H = 6, F = 5, E = 4, k = 2, SF = 3, T = 5;
};

double referenceLoss(const Small& s, const Model& m, const std::vector<double>& x,
                     const std::vector<double>& g) {
  const Mlp experts{m.w_in, m.w_out, s.H, s.F, true};
  const Mlp shared{m.s_in, m.s_out, s.H, s.SF, true};
  double loss = 0;
  for (int t = 0; t < s.T; ++t) {
    std::vector<double> p(s.E);
    double mx = -1e300, z = 0;
    for (int e = 0; e < s.E; ++e) {
      p[e] = 0;
      for (int i = 0; i < s.H; ++i) p[e] += x[t * s.H + i] * m.wr[size_t(i) * s.E + e];
      mx = std::max(mx, p[e]);
    }
    for (double& v : p) z += (v = std::exp(v - mx));
    for (double& v : p) v /= z;
    std::vector<int> order(s.E);
    for (int e = 0; e < s.E; ++e) order[e] = e;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
    std::vector<double> out(s.H, 0);
    for (int j = 0; j < s.k; ++j) {
      const auto y = experts.forward(order[j], &x[t * s.H]);
      for (int o = 0; o < s.H; ++o) out[o] += p[order[j]] * y[o];
    }
    const auto ys = shared.forward(0, &x[t * s.H]);
    for (int o = 0; o < s.H; ++o) loss += g[t * s.H + o] * (out[o] + ys[o]);
  }
  return loss;
}

TEST(MoeLayerGradients, MatchFiniteDifferencesOfTheReference) {
  const Small s;
  GroupConfig gc{s.E, s.H, DType::kF32, s.k, 20000, "local"};
  MoeLayerConfig lc;
  lc.ffn = s.F;
  lc.shared_ffn = s.SF;
  lc.router.topk = s.k;
  Model m = readModel(gc, lc, 3);
  std::mt19937 rng(8);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> x(size_t(s.T) * s.H), g(size_t(s.T) * s.H);
  for (double& v : x) v = normal(rng);
  for (double& v : g) v = normal(rng);

  LocalWorld world(1);
  Group group = Group::create(world, 0, gc);
  MoeLayer layer(group, lc);
  layer.initWeights(3);
  std::vector<float> xf(x.begin(), x.end()), gf(g.begin(), g.end());
  layer.forward(TensorView::matrix(xf.data(), DType::kF32, s.T, s.H));
  Tensor grad_x = layer.backward(TensorView::matrix(gf.data(), DType::kF32, s.T, s.H));

  const double step = 1e-5;
  auto check = [&](std::vector<double>& param, const float* analytic, const char* what) {
    for (size_t i = 0; i < param.size(); i += 1 + param.size() / 23) {
      const double keep = param[i];
      param[i] = keep + step;
      const double up = referenceLoss(s, m, x, g);
      param[i] = keep - step;
      const double down = referenceLoss(s, m, x, g);
      param[i] = keep;
      const double fd = (up - down) / (2 * step);
      EXPECT_NEAR(analytic[i], fd, 2e-3 * (1 + std::fabs(fd))) << what << " [" << i << "]";
    }
  };
  check(x, grad_x.as<float>(), "x");
  check(m.wr, layer.gradRouterWeight().as<float>(), "router weight");
  check(m.w_in, layer.experts().grad_w_in().as<float>(), "expert w_in");
  check(m.w_out, layer.experts().grad_w_out().as<float>(), "expert w_out");
  check(m.s_in, layer.sharedExpert()->grad_w_in().as<float>(), "shared w_in");
}

}  // namespace
