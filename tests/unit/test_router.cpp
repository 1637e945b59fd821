// The basic router against a reference written here: softmax in f64, a full sort with the
// documented tie-break.
#include <gtest/gtest.h>
#include <moecomm/moecomm.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace {

using namespace moecomm;

void referenceRoute(const std::vector<float>& logits, int64_t tokens, int experts, int k,
                    bool renormalize, std::vector<int>& idx, std::vector<double>& w) {
  idx.assign(tokens * k, -1);
  w.assign(tokens * k, 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = &logits[t * experts];
    double max = *std::max_element(row, row + experts), sum = 0;
    std::vector<double> p(experts);
    for (int e = 0; e < experts; ++e) sum += p[e] = std::exp(double(row[e]) - max);
    std::vector<int> order(experts);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
    double kept = 0;
    for (int j = 0; j < k; ++j) kept += p[order[j]] / sum;
    for (int j = 0; j < k; ++j) {
      idx[t * k + j] = order[j];
      w[t * k + j] = p[order[j]] / sum / (renormalize ? kept : 1.0);
    }
  }
}

struct RouterCase {
  int experts;
  int k;
  bool renormalize;
};

class RouterTest : public ::testing::TestWithParam<RouterCase> {};

TEST_P(RouterTest, MatchesReferenceOnRandomLogits) {
  const auto [experts, k, renormalize] = GetParam();
  const int64_t tokens = 257;
  std::mt19937 rng(experts * 100 + k);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(tokens * experts);
  for (float& v : logits) v = normal(rng);
  // Some exact ties: the lower expert id must come first.
  for (int64_t t = 0; t < tokens; t += 5) logits[t * experts + experts - 1] = logits[t * experts];

  Routing r = Router({k, renormalize})
                  .route(TensorView::matrix(logits.data(), DType::kF32, tokens, experts));
  std::vector<int> idx;
  std::vector<double> w;
  referenceRoute(logits, tokens, experts, k, renormalize, idx, w);
  for (int64_t i = 0; i < tokens * k; ++i) {
    ASSERT_EQ(r.topk_idx.as<int32_t>()[i], idx[i]) << "token " << i / k << " slot " << i % k;
    EXPECT_NEAR(r.topk_weights.as<float>()[i], w[i], 1e-6 + 1e-5 * w[i]);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, RouterTest,
                         ::testing::Values(RouterCase{1, 1, false}, RouterCase{8, 2, false},
                                           RouterCase{8, 2, true}, RouterCase{64, 8, true},
                                           RouterCase{64, 64, false}, RouterCase{13, 3, true}));

TEST(Router, AllEqualLogitsPickTheLowestIds) {
  std::vector<float> logits(3 * 10, 0.5f);
  Routing r = Router({4, false}).route(TensorView::matrix(logits.data(), DType::kF32, 3, 10));
  for (int t = 0; t < 3; ++t) {
    for (int j = 0; j < 4; ++j) {
      EXPECT_EQ(r.topk_idx.as<int32_t>()[t * 4 + j], j);
      EXPECT_FLOAT_EQ(r.topk_weights.as<float>()[t * 4 + j], 0.1f);
    }
  }
}

TEST(Router, RejectsBadOptionsAndNonFiniteLogits) {
  EXPECT_THROW(Router({0, false}), Error);
  std::vector<float> logits(4 * 8, 0.0f);
  auto view = TensorView::matrix(logits.data(), DType::kF32, 4, 8);
  EXPECT_THROW(Router({9, false}).route(view), Error);
  logits[2 * 8 + 5] = std::nanf("");
  try {
    Router({2, false}).route(view);
    FAIL() << "NaN accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("logits[2, 5]"), std::string::npos) << e.what();
  }
  logits[2 * 8 + 5] = INFINITY;
  EXPECT_THROW(Router({2, false}).route(view), Error);
  auto wrong = TensorView::matrix(logits.data(), DType::kBF16, 4, 8);
  EXPECT_THROW(Router({2, false}).route(wrong), Error);
}

TEST(Router, ZeroTokensGiveEmptyRouting) {
  Routing r = Router({2, true}).route(TensorView::matrix(nullptr, DType::kF32, 0, 8));
  EXPECT_EQ(r.topk_idx.dim(0), 0);
  EXPECT_EQ(r.topk_weights.dim(1), 2);
}

}  // namespace
