// ExpertMlp with compute_dtype bf16 on the host: every GEMM operand (input, weights, activation,
// output gradient, pre-activation gradient) is rounded to bf16 and the products accumulate in f32,
// the arithmetic of cuBLAS's tensor cores. The reference is f64 over the rounded operands.
//
// The data make the rounding visible and everything else exact: each value is a multiple of 1/8
// (exact in bf16) plus 2^-12, which rounding to bf16 removes and which an f32 GEMM keeps. So the
// pre-activation and its gradient are exact in both (multiples of 1/64), the activation (the
// library's own CPU kernel, f32, on those exact values) is bit-identical in both, and the only
// differences left are f32 summation order in the second GEMMs and the weight gradients.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/bf16_grid.hpp"
#include "kernels/cpu/activations.hpp"
#include "moecomm/error.hpp"
#include "moecomm/experts.hpp"
#include "moecomm/group.hpp"
#include "moecomm/moe_layer.hpp"
#include "src/core/numeric.hpp"

namespace moecomm {
namespace {

using testing::gridValues;

float roundBf16(float v) {
  return numeric::bf16ToFloat(numeric::floatToBf16(v));
}

std::vector<float> rounded(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = roundBf16(v[i]);
  return out;
}

void setTensor(const Tensor& t, const std::vector<float>& values) {
  ASSERT_EQ(static_cast<size_t>(t.numel()), values.size());
  std::memcpy(t.data(), values.data(), values.size() * sizeof(float));
}

std::vector<float> valuesOf(const Tensor& t) {
  return std::vector<float>(t.as<float>(), t.as<float>() + t.numel());
}

// The largest |got - want| relative to the sum of |terms| behind each element.
double worstError(const std::vector<float>& got, const std::vector<double>& want,
                  const std::vector<double>& scale) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    worst = std::max(worst, std::fabs(got[i] - want[i]) / (scale[i] + 1e-30));
  }
  return worst;
}

struct Reference {
  std::vector<double> y, y_scale, dx, dx_scale, gw_in, gw_in_scale, gw_out, gw_out_scale;
};

// f64 over bf16-rounded operands; the activations through the library's f32 CPU kernels.
Reference reference(const ExpertMlpConfig& c, const std::vector<int64_t>& counts,
                    const std::vector<int64_t>& offsets, int64_t rows, const std::vector<float>& x,
                    const std::vector<float>& w_in, const std::vector<float>& w_out,
                    const std::vector<float>& gy, const std::vector<float>& g_in0,
                    const std::vector<float>& g_out0) {
  const int64_t H = c.hidden, F = c.ffn;
  const int64_t C = c.activation == Activation::kSwiGLU ? 2 * F : F;
  const std::vector<float> xr = rounded(x), wir = rounded(w_in), wor = rounded(w_out),
                           gr = rounded(gy);
  std::vector<float> pre(static_cast<size_t>(rows * C), 0.0f), dh(static_cast<size_t>(rows * F));
  Reference r;
  r.y.assign(static_cast<size_t>(rows * H), 0.0);
  r.y_scale = r.dx = r.dx_scale = r.y;
  r.gw_in.assign(g_in0.begin(), g_in0.end());
  r.gw_in_scale.assign(g_in0.size(), 0.0);
  r.gw_out.assign(g_out0.begin(), g_out0.end());
  r.gw_out_scale.assign(g_out0.size(), 0.0);
  for (size_t i = 0; i < g_in0.size(); ++i) r.gw_in_scale[i] = std::fabs(g_in0[i]);
  for (size_t i = 0; i < g_out0.size(); ++i) r.gw_out_scale[i] = std::fabs(g_out0[i]);
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t first = offsets[e], last = offsets[e] + counts[e];
    const float* wi = wir.data() + e * H * C;
    const float* wo = wor.data() + e * F * H;
    for (int64_t t = first; t < last; ++t) {
      for (int64_t j = 0; j < C; ++j) {
        double s = 0;
        for (int64_t k = 0; k < H; ++k) s += double(xr[t * H + k]) * wi[k * C + j];
        pre[t * C + j] = static_cast<float>(s);  // exact: a multiple of 1/64
      }
      for (int64_t f = 0; f < F; ++f) {
        double s = 0;
        for (int64_t k = 0; k < H; ++k) s += double(gr[t * H + k]) * wo[f * H + k];
        dh[t * F + f] = static_cast<float>(s);  // exact, as pre
      }
    }
  }
  std::vector<float> h(static_cast<size_t>(rows * F)), dpre(pre.size());
  if (c.activation == Activation::kSwiGLU) {
    cpu::swigluForward(pre.data(), h.data(), rows, F);
    cpu::swigluBackward(pre.data(), dh.data(), dpre.data(), rows, F);
  } else {
    cpu::geluForward(pre.data(), h.data(), rows * F);
    cpu::geluBackward(pre.data(), dh.data(), dpre.data(), rows * F);
  }
  const std::vector<float> hr = rounded(h), dr = rounded(dpre);
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t first = offsets[e], last = offsets[e] + counts[e];
    const float* wi = wir.data() + e * H * C;
    const float* wo = wor.data() + e * F * H;
    for (int64_t t = first; t < last; ++t) {
      for (int64_t k = 0; k < H; ++k) {
        for (int64_t f = 0; f < F; ++f) {
          const double term = double(hr[t * F + f]) * wo[f * H + k];
          r.y[t * H + k] += term;
          r.y_scale[t * H + k] += std::fabs(term);
        }
        for (int64_t j = 0; j < C; ++j) {
          const double term = double(dr[t * C + j]) * wi[k * C + j];
          r.dx[t * H + k] += term;
          r.dx_scale[t * H + k] += std::fabs(term);
          const double g = double(xr[t * H + k]) * dr[t * C + j];
          r.gw_in[e * H * C + k * C + j] += g;
          r.gw_in_scale[e * H * C + k * C + j] += std::fabs(g);
        }
      }
      for (int64_t f = 0; f < F; ++f) {
        for (int64_t k = 0; k < H; ++k) {
          const double g = double(hr[t * F + f]) * gr[t * H + k];
          r.gw_out[e * F * H + f * H + k] += g;
          r.gw_out_scale[e * F * H + f * H + k] += std::fabs(g);
        }
      }
    }
  }
  return r;
}

struct Errors {
  double y, dx, gw_in, gw_out;
};

Errors run(ExpertMlpConfig config, const std::vector<int64_t>& counts,
           const std::vector<int64_t>& offsets, int64_t rows, DType input_dtype,
           const std::vector<float>& x, const std::vector<float>& w_in,
           const std::vector<float>& w_out, const std::vector<float>& gy,
           const std::vector<float>& g_in0, const std::vector<float>& g_out0,
           const Reference& want) {
  ExpertMlp mlp(config);
  setTensor(mlp.w_in(), w_in);
  setTensor(mlp.w_out(), w_out);
  setTensor(mlp.grad_w_in(), g_in0);
  setTensor(mlp.grad_w_out(), g_out0);
  Tensor x_in = Tensor::empty({rows, config.hidden}, input_dtype);
  Tensor gy_in = Tensor::empty({rows, config.hidden}, input_dtype);
  for (int64_t i = 0; i < x_in.numel(); ++i) {
    if (input_dtype == DType::kF32) {
      x_in.as<float>()[i] = x[i];
      gy_in.as<float>()[i] = gy[i];
    } else {
      x_in.as<uint16_t>()[i] = numeric::floatToBf16(x[i]);
      gy_in.as<uint16_t>()[i] = numeric::floatToBf16(gy[i]);
    }
  }
  const Tensor y = mlp.forward(x_in.view(), counts, offsets);
  const Tensor dx = mlp.backward(gy_in.view());
  return {worstError(valuesOf(y), want.y, want.y_scale),
          worstError(valuesOf(dx), want.dx, want.dx_scale),
          worstError(valuesOf(mlp.grad_w_in()), want.gw_in, want.gw_in_scale),
          worstError(valuesOf(mlp.grad_w_out()), want.gw_out, want.gw_out_scale)};
}

TEST(Bf16Compute, ExpertMlpRoundsEveryGemmOperandAndAccumulatesInF32) {
  const std::vector<int64_t> counts = {5, 0, 9, 1};
  std::vector<int64_t> offsets = {0};
  for (int64_t c : counts) offsets.push_back(offsets.back() + (c + 3) / 4 * 4);
  const int64_t rows = offsets.back() + 2;  // rows past the layout: ignored in, zero out
  for (Activation act : {Activation::kSwiGLU, Activation::kGelu}) {
    ExpertMlpConfig config{40, 24, static_cast<int>(counts.size()), act};
    const int64_t H = config.hidden, F = config.ffn, E = config.num_experts;
    const int64_t C = act == Activation::kSwiGLU ? 2 * F : F;
    std::mt19937 rng(act == Activation::kSwiGLU ? 7u : 8u);
    const auto x = gridValues(static_cast<size_t>(rows * H), rng);
    const auto w_in = gridValues(static_cast<size_t>(E * H * C), rng);
    const auto w_out = gridValues(static_cast<size_t>(E * F * H), rng);
    const auto gy = gridValues(static_cast<size_t>(rows * H), rng);
    const auto g_in0 = gridValues(static_cast<size_t>(E * H * C), rng);  // grads start non-zero
    const auto g_out0 = gridValues(static_cast<size_t>(E * F * H), rng);
    const Reference want =
        reference(config, counts, offsets, rows, x, w_in, w_out, gy, g_in0, g_out0);
    const std::string tag = act == Activation::kSwiGLU ? "swiglu" : "gelu";
    config.compute_dtype = DType::kBF16;
    // f32 summation of at most 48 exact products: a few ulps of the sum of their sizes.
    const double tight = 1e-6;
    for (DType input : {DType::kF32, DType::kBF16}) {
      const Errors e =
          run(config, counts, offsets, rows, input, x, w_in, w_out, gy, g_in0, g_out0, want);
      EXPECT_LT(e.y, tight) << tag << " y, input " << dtypeName(input);
      EXPECT_LT(e.dx, tight) << tag << " grad_x, input " << dtypeName(input);
      EXPECT_LT(e.gw_in, tight) << tag << " grad_w_in, input " << dtypeName(input);
      EXPECT_LT(e.gw_out, tight) << tag << " grad_w_out, input " << dtypeName(input);
    }
    // The same layer in f32 keeps the 2^-12s, and misses this reference by far more: the test
    // sees whether the rounding happened.
    config.compute_dtype = DType::kF32;
    const Errors f32 =
        run(config, counts, offsets, rows, DType::kF32, x, w_in, w_out, gy, g_in0, g_out0, want);
    EXPECT_GT(std::max({f32.y, f32.dx, f32.gw_in, f32.gw_out}), 1000 * tight)
        << tag << ": f32 compute came as close to the bf16 reference as bf16 compute";
  }
}

// One forward and backward of `mlp` on x and gy (f32); y, grad_x and both weight gradients.
struct Step {
  std::vector<float> y, dx, gw_in, gw_out;
};
Step step(ExpertMlp& mlp, const std::vector<int64_t>& counts, const std::vector<int64_t>& offsets,
          int64_t rows, std::vector<float> x, std::vector<float> gy) {
  mlp.zeroGrad();
  const int64_t H = mlp.config().hidden;
  const Tensor y = mlp.forward(TensorView::matrix(x.data(), DType::kF32, rows, H), counts, offsets);
  const Tensor dx = mlp.backward(TensorView::matrix(gy.data(), DType::kF32, rows, H));
  return {valuesOf(y), valuesOf(dx), valuesOf(mlp.grad_w_in()), valuesOf(mlp.grad_w_out())};
}

bool sameSteps(const Step& a, const Step& b) {
  return a.y == b.y && a.dx == b.dx && a.gw_in == b.gw_in && a.gw_out == b.gw_out;
}

// Kept weight operands give what rounding afresh gives, bit for bit, forward and backward; a
// write to the masters is not seen until invalidateWeightOperands (the documented contract, and
// the proof that the kept copies are what forward used); f32 compute keeps nothing.
TEST(Bf16Compute, KeptWeightOperandsMatchFreshOnesUntilInvalidated) {
  const std::vector<int64_t> counts = {7, 0, 3};
  const std::vector<int64_t> offsets = {0, 8, 8, 11};
  const int64_t rows = 11;
  ExpertMlpConfig config{32, 20, 3, Activation::kSwiGLU};
  config.compute_dtype = DType::kBF16;
  std::mt19937 rng(31);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto draw = [&](size_t n) {
    std::vector<float> v(n);
    for (float& f : v) f = normal(rng);
    return v;
  };
  const int64_t H = config.hidden, F = config.ffn, E = config.num_experts;
  const auto w_in = draw(size_t(E * H * 2 * F)), w_out = draw(size_t(E * F * H));
  const auto x = draw(size_t(rows * H)), gy = draw(size_t(rows * H));

  ExpertMlp fresh(config), kept(config);
  for (ExpertMlp* m : {&fresh, &kept}) {
    setTensor(m->w_in(), w_in);
    setTensor(m->w_out(), w_out);
  }
  EXPECT_FALSE(kept.weightOperandsCached());
  kept.cacheWeightOperands();
  ASSERT_TRUE(kept.weightOperandsCached());
  const Step want = step(fresh, counts, offsets, rows, x, gy);
  EXPECT_TRUE(sameSteps(want, step(kept, counts, offsets, rows, x, gy)));
  EXPECT_TRUE(sameSteps(want, step(kept, counts, offsets, rows, x, gy)))
      << "a second forward on the kept operands differs";

  // New weights: the kept copies still hold the old ones until invalidated.
  std::vector<float> w_in2 = w_in;
  for (float& f : w_in2) f *= -0.5f;
  setTensor(fresh.w_in(), w_in2);
  setTensor(kept.w_in(), w_in2);
  const Step want2 = step(fresh, counts, offsets, rows, x, gy);
  ASSERT_FALSE(sameSteps(want, want2));
  EXPECT_TRUE(sameSteps(want, step(kept, counts, offsets, rows, x, gy)))
      << "forward did not use the kept operands";
  kept.invalidateWeightOperands();
  EXPECT_FALSE(kept.weightOperandsCached());
  EXPECT_TRUE(sameSteps(want2, step(kept, counts, offsets, rows, x, gy)));
  kept.cacheWeightOperands();  // kept again, from the new masters
  EXPECT_TRUE(sameSteps(want2, step(kept, counts, offsets, rows, x, gy)));

  // f32 compute: the masters are the operands, so a write is seen at once.
  config.compute_dtype = DType::kF32;
  ExpertMlp f32(config), f32_fresh(config);
  for (ExpertMlp* m : {&f32, &f32_fresh}) {
    setTensor(m->w_in(), w_in);
    setTensor(m->w_out(), w_out);
  }
  f32.cacheWeightOperands();
  EXPECT_FALSE(f32.weightOperandsCached());
  setTensor(f32.w_in(), w_in2);
  setTensor(f32_fresh.w_in(), w_in2);
  EXPECT_TRUE(sameSteps(step(f32_fresh, counts, offsets, rows, x, gy),
                        step(f32, counts, offsets, rows, x, gy)));
}

// MoeLayer::initWeights writes new weights, so it drops the operands its experts kept.
TEST(Bf16Compute, InitWeightsDropsKeptWeightOperands) {
  LocalWorld world(1);
  Group group = Group::create(world, 0, {4, 16, DType::kBF16, 2});
  MoeLayerConfig lc;
  lc.ffn = 8;
  lc.shared_ffn = 8;
  lc.router.topk = 2;
  lc.compute_dtype = DType::kBF16;
  MoeLayer layer(group, lc);
  layer.initWeights(1);
  ASSERT_NE(layer.sharedExpert(), nullptr);
  layer.experts().cacheWeightOperands();
  layer.sharedExpert()->cacheWeightOperands();
  ASSERT_TRUE(layer.experts().weightOperandsCached() &&
              layer.sharedExpert()->weightOperandsCached());
  layer.initWeights(2);
  EXPECT_FALSE(layer.experts().weightOperandsCached());
  EXPECT_FALSE(layer.sharedExpert()->weightOperandsCached());
}

TEST(Bf16Compute, OnlyF32AndBf16AreComputeDtypes) {
  ExpertMlpConfig config{8, 4, 2, Activation::kGelu};
  config.compute_dtype = DType::kFP8E4M3;
  try {
    ExpertMlp mlp(config);
    FAIL() << "an fp8 compute dtype must be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("compute_dtype must be f32 or bf16, got fp8e4m3"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace moecomm
