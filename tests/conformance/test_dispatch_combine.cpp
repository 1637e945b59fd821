// Dispatch, combine and both backward passes on every rank count, hidden size, expert count, top-k
// and payload dtype, against a dense reference that loops over tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <map>
#include <tuple>

#include "common/rank_runner.hpp"
#include "common/reference.hpp"
#include "moecomm/quant.hpp"

namespace {

using namespace moecomm;
using namespace moecomm::testing;

struct Case {
  int ranks, hidden, experts, topk;
  DType dtype;
};

std::string caseName(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  char name[64];
  std::snprintf(name, sizeof(name), "r%d_h%d_e%d_k%d_%s", c.ranks, c.hidden, c.experts, c.topk,
                dtypeName(c.dtype));
  return name;
}

std::vector<Case> allCases() {
  std::vector<Case> cases;
  for (int ranks : {1, 2, 3, 4, 8}) {
    for (int hidden : {16, 100, 1024}) {
      std::vector<int> experts = {ranks, 4 * ranks};
      if (64 % ranks == 0 && ranks != 16) experts.push_back(64);
      for (int e : experts) {
        for (int k : {1, 2, 8}) {
          if (k > e) continue;
          for (DType d : {DType::kF32, DType::kBF16}) cases.push_back({ranks, hidden, e, k, d});
        }
      }
    }
  }
  return cases;
}

// The deterministic "gradient" of expert row (expert e, source rank s, token t, element h).
float gradRow(int e, int s, int64_t t, int64_t h) {
  return std::sin(0.37f * e + 1.3f * s + 0.011f * static_cast<float>(t) +
                  0.7f * static_cast<float>(h));
}

struct World {
  Case c;
  std::vector<RankInputs> inputs;            // per rank
  std::vector<std::vector<float>> grad_out;  // per rank [T, H], rounded to the dtype
  int alignment;
};

World makeWorld(const Case& c) {
  World w{c, {}, {}, c.hidden == 100 ? 4 : 1};
  std::mt19937 rng(c.ranks * 1000003 + c.hidden * 101 + c.experts * 7 + c.topk +
                   static_cast<int>(c.dtype));
  for (int r = 0; r < c.ranks; ++r) {
    int64_t tokens = 3 + (r * 5) % 11;
    RankInputs in = randomInputs(rng, tokens, c.hidden, c.experts, c.topk, c.dtype);
    for (int64_t t = 3; t < tokens; t += 7) {  // some unused slots
      in.idx[t * c.topk + c.topk - 1] = -1;
      in.weights[t * c.topk + c.topk - 1] = 0.0f;
    }
    std::vector<float> g(static_cast<size_t>(tokens * c.hidden));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& v : g) v = roundTo(c.dtype, normal(rng));
    w.inputs.push_back(std::move(in));
    w.grad_out.push_back(std::move(g));
  }
  return w;
}

// The reference layout of one rank: for each local expert, (source rank, token, slot) in order.
struct RefRow {
  int src;
  int64_t token;
  int slot;
};
std::vector<std::vector<RefRow>> referenceLayout(const World& w, int rank) {
  const int local = w.c.experts / w.c.ranks;
  std::vector<std::vector<RefRow>> rows(local);
  for (int s = 0; s < w.c.ranks; ++s) {
    const RankInputs& in = w.inputs[s];
    for (int64_t t = 0; t < in.tokens; ++t) {
      for (int j = 0; j < w.c.topk; ++j) {
        int e = in.idx[t * w.c.topk + j];
        if (e >= 0 && e / local == rank) rows[e % local].push_back({s, t, j});
      }
    }
  }
  return rows;
}

// y as the test's experts compute it, in float, then stored in the payload dtype.
float expertOutput(DType dtype, float x, int e) {
  return roundTo(dtype, static_cast<float>(x * expertScale(e) + expertShift(e)));
}

class DispatchCombine : public ::testing::TestWithParam<Case> {};

TEST_P(DispatchCombine, ForwardAndBackwardMatchDenseReference) {
  const Case c = GetParam();
  const World w = makeWorld(c);
  const double tol = c.dtype == DType::kBF16 ? 1.2e-2 : 2e-6;
  runRanks(c.ranks, [&](RankWorld& world, int rank) {
    GroupConfig config{c.experts, c.hidden, c.dtype, c.topk, 20000, "local"};
    Group group = world.group(rank, config);
    Dispatcher dispatcher(group, DispatchOptions{w.alignment});
    const RankInputs& in = w.inputs[rank];
    const int64_t T = in.tokens, H = c.hidden;
    const int k = c.topk, local = group.localExperts();
    Tensor x = makePayload(in.x, T, H, c.dtype);
    auto idx = TensorView::matrix(const_cast<int32_t*>(in.idx.data()), DType::kI32, T, k);
    auto wts = TensorView::matrix(const_cast<float*>(in.weights.data()), DType::kF32, T, k);

    // ---- dispatch: exact layout, bit-exact rows, weights, zero padding.
    ExpertBatch batch = dispatcher.dispatch(x, idx, wts);
    auto ref = referenceLayout(w, rank);
    ASSERT_EQ(batch.expert_counts.size(), static_cast<size_t>(local));
    for (int e = 0; e < local; ++e) {
      ASSERT_EQ(batch.expert_counts[e], static_cast<int64_t>(ref[e].size())) << "expert " << e;
      ASSERT_EQ(batch.expert_offsets[e] % w.alignment, 0);
      ASSERT_EQ(batch.expert_offsets[e + 1] - batch.expert_offsets[e],
                (batch.expert_counts[e] + w.alignment - 1) / w.alignment * w.alignment);
      for (size_t i = 0; i < ref[e].size(); ++i) {
        const int64_t row = batch.expert_offsets[e] + static_cast<int64_t>(i);
        const RankInputs& src = w.inputs[ref[e][i].src];
        for (int64_t h = 0; h < H; ++h) {
          ASSERT_EQ(payloadAt(batch.x, row * H + h), src.x[ref[e][i].token * H + h]);
        }
        ASSERT_EQ(batch.row_weights.as<float>()[row],
                  src.weights[ref[e][i].token * k + ref[e][i].slot]);
      }
      for (int64_t row = batch.expert_offsets[e] + batch.expert_counts[e];
           row < batch.expert_offsets[e + 1]; ++row) {
        for (int64_t h = 0; h < H; ++h) ASSERT_EQ(payloadAt(batch.x, row * H + h), 0.0f);
        ASSERT_EQ(batch.row_weights.as<float>()[row], 0.0f);
      }
    }
    for (int s = 0; s < c.ranks; ++s) {
      int64_t expected = 0;
      for (int64_t t = 0; t < w.inputs[s].tokens; ++t) {
        bool visits = false;
        for (int j = 0; j < k; ++j) {
          int e = w.inputs[s].idx[t * k + j];
          visits = visits || (e >= 0 && e / local == rank);
        }
        expected += visits;
      }
      EXPECT_EQ(batch.tokens_from_rank[s], expected) << "from rank " << s;
    }

    // ---- the experts, then combine.
    const int64_t R = batch.x.dim(0);
    std::vector<float> y_values(static_cast<size_t>(R * H), 0.0f);
    for (int e = 0; e < local; ++e) {
      for (int64_t row = batch.expert_offsets[e];
           row < batch.expert_offsets[e] + batch.expert_counts[e]; ++row) {
        for (int64_t h = 0; h < H; ++h) {
          y_values[row * H + h] =
              expertOutput(c.dtype, payloadAt(batch.x, row * H + h), group.firstLocalExpert() + e);
        }
      }
    }
    Tensor y = makePayload(y_values, R, H, c.dtype);
    Tensor out = dispatcher.combine(y, batch.handle);
    ASSERT_EQ(out.dim(0), T);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < H; ++h) {
        double expected = 0, magnitude = 0;
        for (int j = 0; j < k; ++j) {
          int e = in.idx[t * k + j];
          if (e < 0) continue;
          double term = in.weights[t * k + j] * double(expertOutput(c.dtype, in.x[t * H + h], e));
          expected += term;
          magnitude += std::fabs(term);
        }
        ASSERT_NEAR(payloadAt(out, t * H + h), expected, tol * magnitude + 1e-6)
            << "token " << t << " h " << h;
      }
    }

    // ---- dispatch backward: unweighted sums of the rows' gradients; padding rows must not count.
    std::vector<float> grad_rows(static_cast<size_t>(R * H), 1e6f);
    for (int e = 0; e < local; ++e) {
      for (size_t i = 0; i < ref[e].size(); ++i) {
        const int64_t row = batch.expert_offsets[e] + static_cast<int64_t>(i);
        for (int64_t h = 0; h < H; ++h) {
          grad_rows[row * H + h] = roundTo(
              c.dtype, gradRow(group.firstLocalExpert() + e, ref[e][i].src, ref[e][i].token, h));
        }
      }
    }
    Tensor grad_rows_t = makePayload(grad_rows, R, H, c.dtype);
    Tensor grad_x = Tensor::empty({T, H}, c.dtype);
    dispatcher.dispatchBackward(grad_rows_t, batch.handle, grad_x);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < H; ++h) {
        double expected = 0, magnitude = 0;
        for (int j = 0; j < k; ++j) {
          int e = in.idx[t * k + j];
          if (e < 0) continue;
          double g = roundTo(c.dtype, gradRow(e, rank, t, h));
          expected += g;
          magnitude += std::fabs(g);
        }
        ASSERT_NEAR(payloadAt(grad_x, t * H + h), expected, tol * magnitude + 1e-6);
      }
    }

    // ---- combine backward: grad_y = w * grad_out, grad_w = <grad_out, y>.
    Tensor grad_out = makePayload(w.grad_out[rank], T, H, c.dtype);
    Tensor grad_y = Tensor::empty({R, H}, c.dtype);
    Tensor grad_w = Tensor::empty({T, k}, DType::kF32);
    dispatcher.combineBackward(grad_out, y, batch.handle, grad_y, grad_w);
    for (int e = 0; e < local; ++e) {
      for (int64_t row = batch.expert_offsets[e]; row < batch.expert_offsets[e + 1]; ++row) {
        const bool real = row < batch.expert_offsets[e] + batch.expert_counts[e];
        for (int64_t h = 0; h < H; ++h) {
          double expected = 0;
          if (real) {
            const RefRow& rr = ref[e][row - batch.expert_offsets[e]];
            expected = double(w.inputs[rr.src].weights[rr.token * k + rr.slot]) *
                       w.grad_out[rr.src][rr.token * H + h];
          }
          ASSERT_NEAR(payloadAt(grad_y, row * H + h), expected, tol * std::fabs(expected) + 1e-7);
        }
      }
    }
    for (int64_t t = 0; t < T; ++t) {
      for (int j = 0; j < k; ++j) {
        int e = in.idx[t * k + j];
        double expected = 0, magnitude = 0;
        for (int64_t h = 0; e >= 0 && h < H; ++h) {
          double term =
              double(w.grad_out[rank][t * H + h]) * expertOutput(c.dtype, in.x[t * H + h], e);
          expected += term;
          magnitude += std::fabs(term);
        }
        ASSERT_NEAR(grad_w.as<float>()[t * k + j], expected, 1e-5 * magnitude + 1e-6)
            << "token " << t << " slot " << j;
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Sweep, DispatchCombine, ::testing::ValuesIn(allCases()), caseName);
// Odd hidden sizes: bf16 rows of an odd number of bytes / 2 must not misalign what follows them
// on the wire (the ids and weights after the rows).
INSTANTIATE_TEST_SUITE_P(OddHidden, DispatchCombine,
                         ::testing::Values(Case{2, 7, 4, 2, DType::kBF16},
                                           Case{3, 101, 12, 8, DType::kBF16},
                                           Case{2, 101, 8, 2, DType::kF32}),
                         caseName);

// Token-major batches (DeepEP's normal mode): one row per (token, receiving rank) in (source
// rank, token) order, with the local expert ids and weights of its slots; combine sums the rows a
// token's ranks send back, without weights.
class TokenMajor : public ::testing::TestWithParam<Case> {};

TEST_P(TokenMajor, RowsIdsWeightsAndAllFourPassesMatchTheReference) {
  const Case c = GetParam();
  const World w = makeWorld(c);
  const double tol = c.dtype == DType::kBF16 ? 1.2e-2 : 2e-6;
  runRanks(c.ranks, [&](RankWorld& world, int rank) {
    Group group = world.group(rank, {c.experts, c.hidden, c.dtype, c.topk, 20000, "local"});
    DispatchOptions options;
    options.layout = BatchLayout::kTokenMajor;
    Dispatcher dispatcher(group, options);
    const RankInputs& in = w.inputs[rank];
    const int64_t T = in.tokens, H = c.hidden;
    const int k = c.topk, local = group.localExperts();
    Tensor x = makePayload(in.x, T, H, c.dtype);
    auto idx = TensorView::matrix(const_cast<int32_t*>(in.idx.data()), DType::kI32, T, k);
    auto wts = TensorView::matrix(const_cast<float*>(in.weights.data()), DType::kF32, T, k);
    ExpertBatch batch = dispatcher.dispatch(x, idx, wts);

    // The reference: (source rank, token) of every token that visits this rank, in order.
    std::vector<std::pair<int, int64_t>> arrivals;
    std::vector<int64_t> slots_per_expert(static_cast<size_t>(local), 0);
    for (int s = 0; s < c.ranks; ++s) {
      for (int64_t t = 0; t < w.inputs[s].tokens; ++t) {
        bool visits = false;
        for (int j = 0; j < k; ++j) {
          const int e = w.inputs[s].idx[t * k + j];
          if (e >= 0 && e / local == rank) {
            visits = true;
            ++slots_per_expert[e % local];
          }
        }
        if (visits) arrivals.emplace_back(s, t);
      }
    }
    const auto R = static_cast<int64_t>(arrivals.size());
    ASSERT_EQ(batch.x.dim(0), R);
    ASSERT_EQ(batch.handle.numRows(), R);
    ASSERT_EQ(batch.topk_idx.dim(0), R);
    ASSERT_EQ(batch.topk_idx.dim(1), k);
    EXPECT_TRUE(batch.expert_offsets.empty());
    EXPECT_FALSE(batch.row_weights.defined());
    EXPECT_EQ(batch.expert_counts, slots_per_expert);
    for (int64_t r = 0; r < R; ++r) {
      const auto [s, t] = arrivals[r];
      const RankInputs& src = w.inputs[s];
      for (int64_t h = 0; h < H; ++h) {
        ASSERT_EQ(payloadAt(batch.x, r * H + h), src.x[t * H + h]) << "row " << r;
      }
      for (int j = 0; j < k; ++j) {
        const int e = src.idx[t * k + j];
        const bool here = e >= 0 && e / local == rank;
        ASSERT_EQ(batch.topk_idx.as<int32_t>()[r * k + j], here ? e % local : -1);
        ASSERT_EQ(batch.topk_weights.as<float>()[r * k + j], here ? src.weights[t * k + j] : 0.0f);
      }
    }

    // The experts: each row's weighted sum over its local experts, stored in the dtype.
    std::vector<float> y_values(static_cast<size_t>(R * H), 0.0f);
    for (int64_t r = 0; r < R; ++r) {
      for (int j = 0; j < k; ++j) {
        const int e = batch.topk_idx.as<int32_t>()[r * k + j];
        if (e < 0) continue;
        const float weight = batch.topk_weights.as<float>()[r * k + j];
        for (int64_t h = 0; h < H; ++h) {
          y_values[r * H + h] += weight * expertOutput(c.dtype, payloadAt(batch.x, r * H + h),
                                                       group.firstLocalExpert() + e);
        }
      }
    }
    for (float& v : y_values) v = roundTo(c.dtype, v);
    Tensor y = makePayload(y_values, R, H, c.dtype);
    Tensor out = dispatcher.combine(y, batch.handle);
    ASSERT_EQ(out.dim(0), T);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < H; ++h) {
        double expected = 0, magnitude = 0;
        for (int j = 0; j < k; ++j) {
          const int e = in.idx[t * k + j];
          if (e < 0) continue;
          const double term =
              in.weights[t * k + j] * double(expertOutput(c.dtype, in.x[t * H + h], e));
          expected += term;
          magnitude += std::fabs(term);
        }
        ASSERT_NEAR(payloadAt(out, t * H + h), expected, 2 * tol * magnitude + 1e-6)
            << "token " << t << " h " << h;
      }
    }

    // dispatchBackward: grad_x[t] = the sum of the gradient rows of t's ranks.
    std::vector<float> grad_rows(static_cast<size_t>(R * H));
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t h = 0; h < H; ++h) {
        grad_rows[r * H + h] =
            roundTo(c.dtype, gradRow(rank, arrivals[r].first, arrivals[r].second, h));
      }
    }
    Tensor grad_x = Tensor::empty({T, H}, c.dtype);
    dispatcher.dispatchBackward(makePayload(grad_rows, R, H, c.dtype), batch.handle, grad_x);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<bool> visited(static_cast<size_t>(c.ranks), false);
      for (int j = 0; j < k; ++j) {
        if (in.idx[t * k + j] >= 0) visited[in.idx[t * k + j] / local] = true;
      }
      for (int64_t h = 0; h < H; ++h) {
        double expected = 0, magnitude = 0;
        for (int d = 0; d < c.ranks; ++d) {
          if (!visited[d]) continue;
          const double g = roundTo(c.dtype, gradRow(d, rank, t, h));
          expected += g;
          magnitude += std::fabs(g);
        }
        ASSERT_NEAR(payloadAt(grad_x, t * H + h), expected, tol * magnitude + 1e-6);
      }
    }

    // combineBackward: grad_y is grad_out as each row's token left home; no weight gradient.
    Tensor grad_out = makePayload(w.grad_out[rank], T, H, c.dtype);
    Tensor grad_y = Tensor::empty({R, H}, c.dtype);
    Tensor grad_w = Tensor::empty({T, k}, DType::kF32);
    std::fill_n(grad_w.as<float>(), T * k, 7.0f);
    dispatcher.combineBackward(grad_out, y, batch.handle, grad_y, grad_w);
    for (int64_t r = 0; r < R; ++r) {
      const auto [s, t] = arrivals[r];
      for (int64_t h = 0; h < H; ++h) {
        ASSERT_EQ(payloadAt(grad_y, r * H + h), w.grad_out[s][t * H + h]) << "row " << r;
      }
    }
    for (int64_t i = 0; i < T * k; ++i) ASSERT_EQ(grad_w.as<float>()[i], 0.0f);
  });
}

INSTANTIATE_TEST_SUITE_P(
    Sweep, TokenMajor,
    ::testing::Values(Case{1, 16, 4, 2, DType::kF32}, Case{2, 100, 8, 3, DType::kBF16},
                      Case{2, 1024, 64, 8, DType::kBF16}, Case{3, 101, 12, 8, DType::kBF16},
                      Case{4, 16, 4, 1, DType::kF32}, Case{4, 100, 64, 8, DType::kF32},
                      Case{8, 24, 16, 2, DType::kBF16}),
    caseName);

// Global capacity in a token-major batch refuses slots in the expert-major order (source rank,
// then token, then slot) and marks them -1 with weight 0; shaping options are refused outright.
TEST(TokenMajor, CapacityRefusesSlotsInSourceOrderAndShapingOptionsAreErrors) {
  runRanks(2, [](RankWorld& world, int rank) {
    Group group = world.group(rank, {4, 8, DType::kF32, 2, 20000, "local"});
    DispatchOptions options;
    options.layout = BatchLayout::kTokenMajor;
    options.expert_capacity = 3;
    Dispatcher dispatcher(group, options);
    // Every rank: 4 tokens, each to experts 0 and 2 (one on each rank).
    const int64_t T = 4;
    std::vector<float> xs(T * 8, 1.0f);
    std::vector<int32_t> idx = {0, 2, 0, 2, 0, 2, 0, 2};
    std::vector<float> wts = {0.5f, 0.25f, 0.5f, 0.25f, 0.5f, 0.25f, 0.5f, 0.25f};
    ExpertBatch batch = dispatcher.dispatch(TensorView::matrix(xs.data(), DType::kF32, T, 8),
                                            TensorView::matrix(idx.data(), DType::kI32, T, 2),
                                            TensorView::matrix(wts.data(), DType::kF32, T, 2));
    ASSERT_EQ(batch.x.dim(0), 2 * T);  // every token of both ranks arrives
    EXPECT_EQ(batch.expert_demand, (std::vector<int64_t>{8, 0}));
    EXPECT_EQ(batch.expert_counts, (std::vector<int64_t>{3, 0}));
    EXPECT_EQ(batch.refused, 5);
    const int slot = rank == 0 ? 0 : 1;  // where this rank's local expert 0 sits in each token
    for (int64_t r = 0; r < 2 * T; ++r) {
      const bool kept = r < 3;  // rank 0's first three tokens
      EXPECT_EQ(batch.topk_idx.as<int32_t>()[r * 2 + slot], kept ? 0 : -1) << "row " << r;
      EXPECT_EQ(batch.topk_weights.as<float>()[r * 2 + slot], kept ? wts[slot] : 0.0f);
      EXPECT_EQ(batch.topk_idx.as<int32_t>()[r * 2 + 1 - slot], -1);
    }

    DispatchOptions aligned;
    aligned.layout = BatchLayout::kTokenMajor;
    aligned.expert_alignment = 4;
    Dispatcher bad(group, aligned);
    try {
      bad.dispatch(TensorView::matrix(xs.data(), DType::kF32, T, 8),
                   TensorView::matrix(idx.data(), DType::kI32, T, 2),
                   TensorView::matrix(wts.data(), DType::kF32, T, 2));
      ADD_FAILURE() << "expert_alignment 4 with a token-major batch was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), StatusCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("token-major"), std::string::npos) << e.what();
    }
  });
}

// The weight gradient against central finite differences in f64 of the reference loss
// L(w) = sum_t <grad_out[t], sum_j w_tj * y_tj>.
TEST(DispatchCombineGradients, WeightGradientMatchesFiniteDifferences) {
  const Case c{2, 24, 8, 3, DType::kF32};
  const World w = makeWorld(c);
  runRanks(c.ranks, [&](RankWorld& world, int rank) {
    Group group = world.group(rank, {c.experts, c.hidden, c.dtype, c.topk, 20000, "local"});
    Dispatcher dispatcher(group);
    const RankInputs& in = w.inputs[rank];
    const int64_t T = in.tokens, H = c.hidden;
    const int k = c.topk;
    Tensor x = makePayload(in.x, T, H, c.dtype);
    ExpertBatch batch = dispatcher.dispatch(
        x, TensorView::matrix(const_cast<int32_t*>(in.idx.data()), DType::kI32, T, k),
        TensorView::matrix(const_cast<float*>(in.weights.data()), DType::kF32, T, k));
    Tensor y = Tensor::empty({batch.x.dim(0), H}, DType::kF32);
    for (int e = 0; e < group.localExperts(); ++e) {
      for (int64_t row = batch.expert_offsets[e]; row < batch.expert_offsets[e + 1]; ++row) {
        for (int64_t h = 0; h < H; ++h) {
          y.as<float>()[row * H + h] =
              expertOutput(c.dtype, batch.x.as<float>()[row * H + h], group.firstLocalExpert() + e);
        }
      }
    }
    Tensor grad_out = makePayload(w.grad_out[rank], T, H, c.dtype);
    Tensor grad_y = Tensor::empty({batch.x.dim(0), H}, DType::kF32);
    Tensor grad_w = Tensor::empty({T, k}, DType::kF32);
    dispatcher.combineBackward(grad_out, y, batch.handle, grad_y, grad_w);

    auto loss = [&](const std::vector<double>& weights) {
      double L = 0;
      for (int64_t t = 0; t < T; ++t) {
        for (int j = 0; j < k; ++j) {
          int e = in.idx[t * k + j];
          if (e < 0) continue;
          for (int64_t h = 0; h < H; ++h) {
            L += w.grad_out[rank][t * H + h] * weights[t * k + j] *
                 expertOutput(c.dtype, in.x[t * H + h], e);
          }
        }
      }
      return L;
    };
    std::vector<double> weights(in.weights.begin(), in.weights.end());
    const double step = 1e-4;
    for (int64_t i = 0; i < T * k; ++i) {
      auto plus = weights, minus = weights;
      plus[i] += step;
      minus[i] -= step;
      double fd = in.idx[i] < 0 ? 0.0 : (loss(plus) - loss(minus)) / (2 * step);
      EXPECT_NEAR(grad_w.as<float>()[i], fd, 1e-4 * (1 + std::fabs(fd))) << "slot " << i;
    }
  });
}

}  // namespace

namespace {

using namespace moecomm;
using namespace moecomm::testing;

// FP8 dispatch (values and per-128 block scales travel together): every routed row's bytes and
// scales arrive unchanged and in the reference layout, padding rows are zeros in both, combine of
// the dequantized rows gives the weighted sum of each token's dequantized row, and a capacity
// refuses rows of both tensors alike. Hidden sizes with a short last block included.
// Every rank's tokens quantized to fp8 e4m3 with block scales, as every rank's reference.
struct Fp8Tokens {
  std::vector<std::vector<uint8_t>> q;
  std::vector<std::vector<float>> scales, dequantized;
};

Fp8Tokens quantizeTokens(const World& w, int hidden, int64_t S) {
  Fp8Tokens f;
  for (const RankInputs& in : w.inputs) {
    f.q.emplace_back(static_cast<size_t>(in.tokens * hidden));
    f.scales.emplace_back(static_cast<size_t>(in.tokens * S));
    f.dequantized.emplace_back(f.q.back().size());
    auto xv = TensorView::matrix(const_cast<float*>(in.x.data()), DType::kF32, in.tokens, hidden);
    auto qv = TensorView::matrix(f.q.back().data(), DType::kFP8E4M3, in.tokens, hidden);
    auto sv = TensorView::matrix(f.scales.back().data(), DType::kF32, in.tokens, S);
    quantizeFp8(xv, qv, sv);
    dequantizeFp8(qv, sv,
                  TensorView::matrix(f.dequantized.back().data(), DType::kF32, in.tokens, hidden));
  }
  return f;
}

TEST(DispatchFp8, RowsAndScalesArriveIntactAndCombineWorks) {
  for (int ranks : {1, 2, 3, 4}) {
    for (int hidden : {100, 300}) {
      const Case c{ranks, hidden, 4 * ranks, 2, DType::kFP8E4M3};
      World w = makeWorld(Case{ranks, hidden, 4 * ranks, 2, DType::kF32});
      w.c = c;
      const int64_t S = (hidden + kFp8BlockSize - 1) / kFp8BlockSize;
      const Fp8Tokens f = quantizeTokens(w, hidden, S);
      const auto& q = f.q;
      const auto& scales = f.scales;
      const auto& dequantized = f.dequantized;
      for (int64_t capacity : {int64_t{0}, int64_t{2}}) {
        runRanks(ranks, [&](RankWorld& world, int rank) {
          GroupConfig config{c.experts, hidden, DType::kFP8E4M3, c.topk, 20000, "local"};
          Group group = world.group(rank, config);
          Dispatcher dispatcher(group, DispatchOptions{w.alignment, capacity});
          const RankInputs& in = w.inputs[rank];
          const int64_t T = in.tokens, H = hidden;
          const int k = c.topk, local = group.localExperts();
          auto xq = TensorView::matrix(const_cast<uint8_t*>(q[rank].data()), DType::kFP8E4M3, T, H);
          auto xs = TensorView::matrix(const_cast<float*>(scales[rank].data()), DType::kF32, T, S);
          auto idx = TensorView::matrix(const_cast<int32_t*>(in.idx.data()), DType::kI32, T, k);
          auto wts = TensorView::matrix(const_cast<float*>(in.weights.data()), DType::kF32, T, k);
          ExpertBatch batch = dispatcher.dispatch(xq, xs, idx, wts);
          ASSERT_EQ(batch.x.dtype(), DType::kFP8E4M3);
          ASSERT_EQ(batch.x_scales.dim(0), batch.x.dim(0));
          ASSERT_EQ(batch.x_scales.dim(1), S);
          const auto* rows = batch.x.as<uint8_t>();
          const auto* row_scales = batch.x_scales.as<float>();
          auto ref = referenceLayout(w, rank);
          for (int e = 0; e < local; ++e) {
            const auto kept = std::min<int64_t>(static_cast<int64_t>(ref[e].size()),
                                                capacity > 0 ? capacity : INT64_MAX);
            ASSERT_EQ(batch.expert_counts[e], kept) << "expert " << e;
            for (int64_t i = 0; i < kept; ++i) {
              const int64_t row = batch.expert_offsets[e] + i;
              const RefRow& rr = ref[e][static_cast<size_t>(i)];
              ASSERT_TRUE(std::equal(rows + row * H, rows + (row + 1) * H,
                                     q[rr.src].begin() + rr.token * H))
                  << "expert " << e << " row " << i << " from rank " << rr.src;
              ASSERT_TRUE(std::equal(row_scales + row * S, row_scales + (row + 1) * S,
                                     scales[rr.src].begin() + rr.token * S))
                  << "scales of expert " << e << " row " << i;
            }
            for (int64_t row = batch.expert_offsets[e] + kept; row < batch.expert_offsets[e + 1];
                 ++row) {
              for (int64_t h = 0; h < H; ++h) ASSERT_EQ(rows[row * H + h], 0u);
              for (int64_t b = 0; b < S; ++b) ASSERT_EQ(row_scales[row * S + b], 0.0f);
            }
          }
          if (capacity > 0) return;  // refused slots are covered by the f32/bf16 suites
          // The experts see the dequantized rows; combine must bring back their weighted sum.
          const int64_t R = batch.x.dim(0);
          Tensor y = Tensor::empty({R, H}, DType::kF32);
          dequantizeFp8(batch.x.view(), batch.x_scales.view(), y.view());
          Tensor out = dispatcher.combine(y, batch.handle);
          for (int64_t t = 0; t < T; ++t) {
            double weight = 0;
            for (int j = 0; j < k; ++j)
              weight += in.idx[t * k + j] >= 0 ? in.weights[t * k + j] : 0;
            for (int64_t h = 0; h < H; ++h) {
              const double expected = weight * dequantized[rank][t * H + h];
              ASSERT_NEAR(out.as<float>()[t * H + h], expected, 1e-5 * std::fabs(expected) + 1e-6)
                  << "token " << t << " h " << h;
            }
          }
        });
      }
    }
  }
}

// A token-major FP8 batch: every arriving row and its scales as sent, this rank's own included
// (they come straight from x and x_scales, not through a message).
TEST(DispatchFp8, TokenMajorRowsAndScalesArriveIntact) {
  for (int ranks : {1, 2, 3}) {
    const int hidden = 300;
    World w = makeWorld(Case{ranks, hidden, 4 * ranks, 2, DType::kF32});
    const int64_t S = (hidden + kFp8BlockSize - 1) / kFp8BlockSize;
    const Fp8Tokens f = quantizeTokens(w, hidden, S);
    runRanks(ranks, [&](RankWorld& world, int rank) {
      Group group = world.group(rank, {4 * ranks, hidden, DType::kFP8E4M3, 2, 20000, "local"});
      DispatchOptions options;
      options.layout = BatchLayout::kTokenMajor;
      Dispatcher dispatcher(group, options);
      const RankInputs& in = w.inputs[rank];
      const int64_t T = in.tokens;
      ExpertBatch batch = dispatcher.dispatch(
          TensorView::matrix(const_cast<uint8_t*>(f.q[rank].data()), DType::kFP8E4M3, T, hidden),
          TensorView::matrix(const_cast<float*>(f.scales[rank].data()), DType::kF32, T, S),
          TensorView::matrix(const_cast<int32_t*>(in.idx.data()), DType::kI32, T, 2),
          TensorView::matrix(const_cast<float*>(in.weights.data()), DType::kF32, T, 2));
      int64_t r = 0;
      for (int s = 0; s < ranks; ++s) {
        for (int64_t t = 0; t < w.inputs[s].tokens; ++t) {
          const int32_t* ids = &w.inputs[s].idx[t * 2];
          const int local = group.localExperts();
          if (!((ids[0] >= 0 && ids[0] / local == rank) || (ids[1] >= 0 && ids[1] / local == rank)))
            continue;
          ASSERT_LT(r, batch.x.dim(0));
          const auto* row = batch.x.as<uint8_t>() + r * hidden;
          ASSERT_TRUE(std::equal(row, row + hidden, f.q[s].begin() + t * hidden))
              << "row " << r << " from rank " << s;
          const float* row_scales = batch.x_scales.as<float>() + r * S;
          ASSERT_TRUE(std::equal(row_scales, row_scales + S, f.scales[s].begin() + t * S))
              << "scales of row " << r << " from rank " << s;
          ++r;
        }
      }
      EXPECT_EQ(r, batch.x.dim(0));
    });
  }
}

TEST(DispatchFp8, MissingOrMisplacedScalesAreClearErrors) {
  runRanks(2, [&](RankWorld& world, int rank) {
    const int64_t T = 3, H = 130, S = 2;
    std::vector<uint8_t> q(T * H, 0x38);
    std::vector<float> scales(T * S, 1.0f), wrong(T, 1.0f), weights(T * 2, 0.5f);
    std::vector<int32_t> idx = {0, 3, 1, 2, 3, 0};
    auto xq = TensorView::matrix(q.data(), DType::kFP8E4M3, T, H);
    auto xs = TensorView::matrix(scales.data(), DType::kF32, T, S);
    auto bad_scales = TensorView::matrix(wrong.data(), DType::kF32, T, 1);
    auto iv = TensorView::matrix(idx.data(), DType::kI32, T, 2);
    auto wv = TensorView::matrix(weights.data(), DType::kF32, T, 2);
    auto expectError = [](auto&& fn, const std::string& text) {
      try {
        fn();
        ADD_FAILURE() << "accepted; expected an error containing: " << text;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
      }
    };
    Group fp8 = world.group(rank, GroupConfig{4, H, DType::kFP8E4M3, 2, 20000, "local"});
    Dispatcher d(fp8);
    expectError([&] { d.dispatch(xq, iv, wv); }, "needs x_scales");
    expectError([&] { d.dispatch(xq, bad_scales, iv, wv); }, "x_scales");
    ExpertBatch ok = d.dispatch(xq, xs, iv, wv);  // the group still works after refusals
    EXPECT_EQ(ok.x_scales.dim(1), S);
    std::vector<float> xf(T * H, 1.0f);
    Group f32 = world.group(rank, GroupConfig{4, H, DType::kF32, 2, 20000, "local"});
    Dispatcher d32(f32);
    expectError([&] { d32.dispatch(TensorView::matrix(xf.data(), DType::kF32, T, H), xs, iv, wv); },
                "fp8e4m3 groups only");
  });
}

}  // namespace
