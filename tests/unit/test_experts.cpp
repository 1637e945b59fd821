// Grouped GEMMs and expert MLPs against naive double-precision references on random data, with
// zero-row experts, alignment padding, bf16 activations, and every gradient form.
#include <gtest/gtest.h>
#include <moecomm/moecomm.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "common/reference.hpp"

namespace {

using namespace moecomm;
using moecomm::testing::roundTo;

struct Layout {
  std::vector<int64_t> counts, offsets;
  int64_t rows = 0;
};

// Expert e has counts[e] rows, padded to `align`; a trailing gap of 3 rows follows the last block.
Layout makeLayout(const std::vector<int64_t>& counts, int64_t align) {
  Layout l{counts, {0}, 0};
  for (int64_t c : counts) l.offsets.push_back(l.offsets.back() + (c + align - 1) / align * align);
  l.rows = l.offsets.back() + 3;
  return l;
}

std::vector<float> randomVector(std::mt19937& rng, size_t n, DType dtype = DType::kF32) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = roundTo(dtype, normal(rng));
  return v;
}

Tensor tensorOf(const std::vector<float>& values, std::initializer_list<int64_t> shape,
                DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  convert(TensorView::vector(const_cast<float*>(values.data()), DType::kF32,
                             static_cast<int64_t>(values.size())),
          TensorView::vector(t.data(), dtype, t.numel()));
  return t;
}

class GroupedGemmForms : public ::testing::TestWithParam<DType> {};

TEST_P(GroupedGemmForms, EveryFormMatchesANaiveReference) {
  const DType act = GetParam();
  std::mt19937 rng(7);
  const Layout l = makeLayout({5, 0, 17, 1, 0, 9}, 4);
  const int64_t E = 6, K = 24, N = 40, R = l.rows;
  const auto a = randomVector(rng, R * K, act);
  const auto w = randomVector(rng, E * K * N);
  const auto g = randomVector(rng, R * N, act);
  Tensor a_t = tensorOf(a, {R, K}, act), g_t = tensorOf(g, {R, N}, act);
  Tensor w_t = Tensor::empty({E, K, N}, DType::kF32);
  std::copy(w.begin(), w.end(), w_t.as<float>());

  Tensor y = Tensor::empty({R, N}, DType::kF32);
  std::fill_n(y.as<float>(), y.numel(), 99.0f);  // padding must be overwritten with zeros
  groupedGemm(GemmForm::kNN, a_t, w_t, y, l.counts, l.offsets);
  Tensor dx = Tensor::empty({R, K}, DType::kF32);
  std::fill_n(dx.as<float>(), dx.numel(), 99.0f);
  groupedGemm(GemmForm::kNT, g_t, w_t, dx, l.counts, l.offsets);
  Tensor dw = Tensor::empty({E, K, N}, DType::kF32);
  std::fill_n(dw.as<float>(), dw.numel(), 2.0f);
  groupedGemm(GemmForm::kTN, a_t, g_t, dw, l.counts, l.offsets, 0.5f);

  for (int64_t e = 0; e < E; ++e) {
    const int64_t first = l.offsets[e], last = first + l.counts[e];
    for (int64_t r = first; r < l.offsets[e + 1]; ++r) {
      for (int64_t n = 0; n < N; ++n) {
        double ref = 0;
        for (int64_t k = 0; r < last && k < K; ++k)
          ref += double(a[r * K + k]) * w[(e * K + k) * N + n];
        ASSERT_NEAR(y.as<float>()[r * N + n], ref, 1e-4 * (1 + std::fabs(ref))) << e << " " << r;
      }
      for (int64_t k = 0; k < K; ++k) {
        double ref = 0;
        for (int64_t n = 0; r < last && n < N; ++n)
          ref += double(g[r * N + n]) * w[(e * K + k) * N + n];
        ASSERT_NEAR(dx.as<float>()[r * K + k], ref, 1e-4 * (1 + std::fabs(ref)));
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t n = 0; n < N; ++n) {
        double ref = 0.5 * 2.0;  // beta * old
        for (int64_t r = first; r < last; ++r) ref += double(a[r * K + k]) * g[r * N + n];
        ASSERT_NEAR(dw.as<float>()[(e * K + k) * N + n], ref, 1e-4 * (1 + std::fabs(ref)));
      }
    }
  }
  for (int64_t r = l.offsets.back(); r < R; ++r) {
    for (int64_t n = 0; n < N; ++n) ASSERT_EQ(y.as<float>()[r * N + n], 0.0f);
  }
}

INSTANTIATE_TEST_SUITE_P(Activations, GroupedGemmForms,
                         ::testing::Values(DType::kF32, DType::kBF16), [](const auto& param_info) {
                           return std::string(dtypeName(param_info.param));
                         });

TEST(GroupedGemm, BadShapesAndLayoutsAreRejectedWithTheirSizes) {
  Tensor a = Tensor::zeros({8, 4}, DType::kF32), w = Tensor::zeros({2, 4, 6}, DType::kF32);
  Tensor c = Tensor::zeros({8, 6}, DType::kF32), wrong = Tensor::zeros({8, 5}, DType::kF32);
  try {
    groupedGemm(GemmForm::kNN, a, w, wrong, {4, 4}, {0, 4, 8});
    FAIL() << "accepted C [8, 5]";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("C [R, N]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(groupedGemm(GemmForm::kNN, a, w, c, {4, 5}, {0, 4, 8}), Error);  // 5 rows in 4
  EXPECT_THROW(groupedGemm(GemmForm::kNN, a, w, c, {4, 4}, {0, 4}), Error);     // short offsets
  EXPECT_THROW(groupedGemm(GemmForm::kNN, a, w, c, {4, 4}, {0, 4, 9}), Error);  // past the rows
  EXPECT_THROW(groupedGemm(GemmForm::kNN, a, w, c, {4, 4}, {0, 4, 8}, 1.0f), Error);  // beta
  try {  // a token-major batch has no offsets
    groupedGemm(GemmForm::kNN, a, w, c, {4, 4}, {});
    FAIL() << "accepted empty offsets";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token-major"), std::string::npos) << e.what();
  }
}

// ---- expert MLPs against a double-precision reference, forward and backward.
double silu(double x) {
  return x / (1 + std::exp(-x));
}
double gelu(double x) {
  return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
}

struct MlpCase {
  Activation activation;
  DType dtype;
};

class ExpertMlpCases : public ::testing::TestWithParam<MlpCase> {};

TEST_P(ExpertMlpCases, ForwardAndBackwardMatchAReferenceInDouble) {
  const auto [activation, dtype] = GetParam();
  const bool swiglu = activation == Activation::kSwiGLU;
  std::mt19937 rng(11);
  const int64_t E = 4, H = 12, F = 20, Fin = swiglu ? 2 * F : F;
  const Layout l = makeLayout({3, 0, 6, 2}, 2);
  const int64_t R = l.rows;
  ExpertMlp mlp({int(H), int(F), int(E), activation});
  auto w_in = randomVector(rng, E * H * Fin), w_out = randomVector(rng, E * F * H);
  for (float& v : w_in) v *= 0.3f;
  for (float& v : w_out) v *= 0.3f;
  std::copy(w_in.begin(), w_in.end(), mlp.w_in().as<float>());
  std::copy(w_out.begin(), w_out.end(), mlp.w_out().as<float>());
  const auto x = randomVector(rng, R * H, dtype);
  const auto gy = randomVector(rng, R * H);
  Tensor y = mlp.forward(tensorOf(x, {R, H}, dtype), l.counts, l.offsets);
  Tensor gx = mlp.backward(tensorOf(gy, {R, H}, DType::kF32));

  std::vector<double> ref_gw_in(E * H * Fin, 0), ref_gw_out(E * F * H, 0);
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t r = l.offsets[e]; r < l.offsets[e + 1]; ++r) {
      const bool real = r < l.offsets[e] + l.counts[e];
      std::vector<double> pre(Fin, 0), h(F), dh(F, 0), dpre(Fin);
      for (int64_t j = 0; j < Fin; ++j) {
        for (int64_t k = 0; k < H; ++k)
          pre[j] += x[r * H + k] * double(w_in[(e * H + k) * Fin + j]);
      }
      for (int64_t j = 0; j < F; ++j) h[j] = swiglu ? silu(pre[j]) * pre[F + j] : gelu(pre[j]);
      for (int64_t o = 0; o < H; ++o) {
        double ref = 0;
        for (int64_t j = 0; j < F; ++j) ref += h[j] * w_out[(e * F + j) * H + o];
        ASSERT_NEAR(y.as<float>()[r * H + o], real ? ref : 0.0, 1e-4 * (1 + std::fabs(ref)));
      }
      if (!real) continue;
      for (int64_t j = 0; j < F; ++j) {
        for (int64_t o = 0; o < H; ++o) {
          dh[j] += gy[r * H + o] * double(w_out[(e * F + j) * H + o]);
          ref_gw_out[(e * F + j) * H + o] += h[j] * gy[r * H + o];
        }
      }
      for (int64_t j = 0; j < F; ++j) {
        if (swiglu) {
          const double s = 1 / (1 + std::exp(-pre[j]));
          dpre[j] = dh[j] * pre[F + j] * s * (1 + pre[j] * (1 - s));
          dpre[F + j] = dh[j] * silu(pre[j]);
        } else {
          const double cdf = 0.5 * (1 + std::erf(pre[j] / std::sqrt(2.0)));
          dpre[j] = dh[j] * (cdf + pre[j] * std::exp(-0.5 * pre[j] * pre[j]) / std::sqrt(2 * M_PI));
        }
      }
      for (int64_t k = 0; k < H; ++k) {
        double ref = 0;
        for (int64_t j = 0; j < Fin; ++j) {
          ref += dpre[j] * w_in[(e * H + k) * Fin + j];
          ref_gw_in[(e * H + k) * Fin + j] += x[r * H + k] * dpre[j];
        }
        ASSERT_NEAR(gx.as<float>()[r * H + k], ref, 1e-4 * (1 + std::fabs(ref)));
      }
    }
  }
  for (size_t i = 0; i < ref_gw_in.size(); ++i) {
    ASSERT_NEAR(mlp.grad_w_in().as<float>()[i], ref_gw_in[i], 1e-4 * (1 + std::fabs(ref_gw_in[i])));
  }
  for (size_t i = 0; i < ref_gw_out.size(); ++i) {
    ASSERT_NEAR(mlp.grad_w_out().as<float>()[i], ref_gw_out[i],
                1e-4 * (1 + std::fabs(ref_gw_out[i])));
  }
  // A second backward accumulates; zeroGrad clears.
  mlp.backward(tensorOf(gy, {R, H}, DType::kF32));
  EXPECT_NEAR(mlp.grad_w_out().as<float>()[5], 2 * ref_gw_out[5],
              1e-4 * (1 + std::fabs(ref_gw_out[5])));
  mlp.zeroGrad();
  EXPECT_EQ(mlp.grad_w_in().as<float>()[0], 0.0f);
}

INSTANTIATE_TEST_SUITE_P(Kinds, ExpertMlpCases,
                         ::testing::Values(MlpCase{Activation::kSwiGLU, DType::kF32},
                                           MlpCase{Activation::kSwiGLU, DType::kBF16},
                                           MlpCase{Activation::kGelu, DType::kF32}),
                         [](const auto& param_info) {
                           return std::string(param_info.param.activation == Activation::kSwiGLU
                                                  ? "swiglu_"
                                                  : "gelu_") +
                                  dtypeName(param_info.param.dtype);
                         });

TEST(ExpertMlp, BackwardBeforeForwardIsAnError) {
  ExpertMlp mlp({8, 8, 2, Activation::kGelu});
  Tensor g = Tensor::zeros({2, 8}, DType::kF32);
  try {
    mlp.backward(g);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidUsage);
  }
}

}  // namespace
