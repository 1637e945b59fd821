// Adversarial routings and bad input: skew, silence, empty ranks, and every documented error, each
// on every rank with no hang and no output that looks valid.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <utility>

#include "common/rank_runner.hpp"
#include "common/reference.hpp"

namespace {

using namespace moecomm;
using namespace moecomm::testing;

constexpr int kHidden = 40;

GroupConfig config(int experts, int topk, int64_t timeout_ms = 20000) {
  return GroupConfig{experts, kHidden, DType::kF32, topk, timeout_ms, "local"};
}

// Runs dispatch -> (y = 2x + expert) -> combine with the given routing per rank, and checks combine
// against the dense reference. tokens(rank) and route(rank, t, j) define the inputs.
void runAndCheck(int ranks, int experts, int topk, const std::function<int64_t(int)>& tokens,
                 const std::function<int(int, int64_t, int)>& route,
                 const std::function<void(int, const ExpertBatch&)>& inspect = nullptr) {
  runRanks(ranks, [&](RankWorld& world, int rank) {
    Group group = world.group(rank, config(experts, topk));
    Dispatcher dispatcher(group);
    const int64_t T = tokens(rank);
    std::vector<float> x(static_cast<size_t>(T * kHidden));
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rank * 1000 + i % 977) * 0.01f;
    std::vector<int32_t> idx(static_cast<size_t>(T * topk));
    std::vector<float> w(idx.size());
    for (int64_t t = 0; t < T; ++t) {
      for (int j = 0; j < topk; ++j) {
        idx[t * topk + j] = route(rank, t, j);
        w[t * topk + j] = 0.25f + 0.5f * static_cast<float>(j);
      }
    }
    ExpertBatch batch = dispatcher.dispatch(TensorView::matrix(x.data(), DType::kF32, T, kHidden),
                                            TensorView::matrix(idx.data(), DType::kI32, T, topk),
                                            TensorView::matrix(w.data(), DType::kF32, T, topk));
    if (inspect) inspect(rank, batch);
    Tensor y = Tensor::empty({batch.x.dim(0), kHidden}, DType::kF32);
    for (int e = 0; e < group.localExperts(); ++e) {
      for (int64_t r = batch.expert_offsets[e]; r < batch.expert_offsets[e + 1]; ++r) {
        for (int h = 0; h < kHidden; ++h) {
          y.as<float>()[r * kHidden + h] =
              2.0f * batch.x.as<float>()[r * kHidden + h] + float(group.firstLocalExpert() + e);
        }
      }
    }
    Tensor out = dispatcher.combine(y, batch.handle);
    for (int64_t t = 0; t < T; ++t) {
      for (int h = 0; h < kHidden; ++h) {
        double expected = 0;
        for (int j = 0; j < topk; ++j) {
          int e = idx[t * topk + j];
          if (e >= 0) expected += w[t * topk + j] * (2.0 * x[t * kHidden + h] + e);
        }
        ASSERT_NEAR(out.as<float>()[t * kHidden + h], expected, 1e-5 * (1 + std::fabs(expected)));
      }
    }
  });
}

TEST(Adversarial, EveryTokenToOneExpert) {
  runAndCheck(
      4, 8, 1, [](int) { return 50; }, [](int, int64_t, int) { return 5; },
      [](int rank, const ExpertBatch& b) {
        EXPECT_EQ(b.x.dim(0), rank == 2 ? 200 : 0);  // expert 5 lives on rank 2
      });
}

TEST(Adversarial, ARankThatSendsNothing) {
  runAndCheck(
      3, 6, 2, [](int) { return 17; },
      [](int rank, int64_t t, int j) { return rank == 1 ? -1 : int((t + 2 * j) % 6); });
}

TEST(Adversarial, TokensWhoseSlotsAreAllUnused) {
  runAndCheck(
      2, 4, 2, [](int) { return 9; },
      [](int, int64_t t, int j) { return t % 3 == 0 ? -1 : int((t + j) % 4); });
}

TEST(Adversarial, ZeroTokensOnSomeRanks) {
  runAndCheck(
      4, 8, 2, [](int rank) { return rank % 2 == 0 ? 0 : 13; },
      [](int, int64_t t, int j) { return int((3 * t + j) % 8); });
}

TEST(Adversarial, ZeroTokensEverywhere) {
  runAndCheck(
      3, 3, 1, [](int) { return 0; }, [](int, int64_t, int) { return 0; });
}

TEST(Adversarial, Int64IndicesAsTorchTopkGivesThem) {
  runRanks(2, [](RankWorld& world, int rank) {
    Group group = world.group(rank, config(4, 2));
    Dispatcher d(group);
    std::vector<float> x(3 * kHidden, 1.0f), w = {0.5f, 0.5f, 1, 0, 0.3f, 0.7f};
    std::vector<int64_t> idx = {0, 3, 1, -1, 2, 1};
    ExpertBatch b = d.dispatch(TensorView::matrix(x.data(), DType::kF32, 3, kHidden),
                               TensorView::matrix(idx.data(), DType::kI64, 3, 2),
                               TensorView::matrix(w.data(), DType::kF32, 3, 2));
    // Both ranks route alike; rank 0 holds experts 0-1, rank 1 experts 2-3.
    const std::vector<int64_t> expected =
        rank == 0 ? std::vector<int64_t>{2, 4} : std::vector<int64_t>{2, 2};
    EXPECT_EQ(b.expert_counts, expected);
  });
}

// ---- bad input. Every rank calls dispatch; rank `bad` passes the broken input.
struct BadInputResult {
  StatusCode code;
  std::string message;
};

std::vector<BadInputResult> dispatchWithBadRank(
    int ranks, int bad,
    const std::function<void(TensorView&, TensorView&, TensorView&, DispatchOptions&)>& spoil) {
  std::vector<BadInputResult> results(ranks, {StatusCode::kSuccess, ""});
  runRanks(ranks, [&](RankWorld& world, int rank) {
    Group group = world.group(rank, config(8, 2, 5000));
    const int64_t T = 6;
    std::vector<float> x(T * kHidden, 1.0f), w(T * 2, 0.5f);
    std::vector<int32_t> idx(T * 2);
    for (int64_t t = 0; t < T; ++t) {
      idx[t * 2] = int32_t(t % 8);
      idx[t * 2 + 1] = int32_t((t + 3) % 8);
    }
    TensorView xv = TensorView::matrix(x.data(), DType::kF32, T, kHidden);
    TensorView iv = TensorView::matrix(idx.data(), DType::kI32, T, 2);
    TensorView wv = TensorView::matrix(w.data(), DType::kF32, T, 2);
    DispatchOptions options;
    if (rank == bad) spoil(xv, iv, wv, options);
    Dispatcher d(group, options);
    try {
      d.dispatch(xv, iv, wv);
    } catch (const Error& e) {
      results[rank] = {e.code(), e.what()};
    }
    // The group stays usable: a good dispatch right after works on every rank.
    DispatchOptions good;
    Dispatcher d2(group, good);
    ExpertBatch b = d2.dispatch(TensorView::matrix(x.data(), DType::kF32, T, kHidden),
                                TensorView::matrix(idx.data(), DType::kI32, T, 2),
                                TensorView::matrix(w.data(), DType::kF32, T, 2));
    EXPECT_GT(b.x.dim(0), 0);
    EXPECT_NE(group.lastError(), "");
  });
  return results;
}

void expectRejected(const std::vector<BadInputResult>& results, int bad, const std::string& text) {
  if (::testing::Test::IsSkipped()) return;
  for (size_t r = 0; r < results.size(); ++r) {
    if (!rankRunsHere(static_cast<int>(r))) continue;  // launched: each process checks its own
    if (static_cast<int>(r) == bad) {
      EXPECT_EQ(results[r].code, StatusCode::kInvalidArgument) << results[r].message;
    } else {
      EXPECT_EQ(results[r].code, StatusCode::kRemoteError) << results[r].message;
      EXPECT_NE(results[r].message.find("rank " + std::to_string(bad) + " reported"),
                std::string::npos)
          << results[r].message;
    }
    EXPECT_NE(results[r].message.find(text), std::string::npos) << results[r].message;
  }
}

TEST(BadInput, ExpertIdOutOfRange) {
  std::vector<int32_t> bad_idx = {0, 300, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2};
  auto results =
      dispatchWithBadRank(4, 1, [&](TensorView&, TensorView& idx, TensorView&, DispatchOptions&) {
        idx.data = bad_idx.data();
      });
  expectRejected(results, 1, "topk_idx[0, 1] = 300 is out of range");
}

TEST(BadInput, SameExpertTwiceInAToken) {
  std::vector<int32_t> bad_idx = {0, 1, 4, 4, 3, 2, 5, 6, 7, 0, 1, 2};
  auto results =
      dispatchWithBadRank(2, 0, [&](TensorView&, TensorView& idx, TensorView&, DispatchOptions&) {
        idx.data = bad_idx.data();
      });
  expectRejected(results, 0, "token 1 names expert 4 twice");
}

TEST(BadInput, HiddenSizeThatDiffersFromTheGroup) {
  auto results = dispatchWithBadRank(
      2, 1,
      [](TensorView& x, TensorView&, TensorView&, DispatchOptions&) { x.shape[1] = kHidden - 1; });
  expectRejected(results, 1, "expected shape [*, 40]");
}

TEST(BadInput, NullData) {
  auto results = dispatchWithBadRank(
      4, 3, [](TensorView& x, TensorView&, TensorView&, DispatchOptions&) { x.data = nullptr; });
  expectRejected(results, 3, "null data");
}

TEST(BadInput, WrongDtype) {
  auto results = dispatchWithBadRank(
      2, 0,
      [](TensorView&, TensorView&, TensorView& w, DispatchOptions&) { w.dtype = DType::kBF16; });
  expectRejected(results, 0, "topk_weights has dtype bf16, expected f32");
}

TEST(BadInput, ReceiveAlignmentOfZero) {
  auto results = dispatchWithBadRank(
      2, 1,
      [](TensorView&, TensorView&, TensorView&, DispatchOptions& o) { o.expert_alignment = 0; });
  expectRejected(results, 1, "expert_alignment must be >= 1");
}

TEST(BadInput, CombineWithWrongShapeLeavesOutputUntouched) {
  runRanks(2, [](RankWorld& world, int rank) {
    Group group = world.group(rank, config(4, 1, 5000));
    Dispatcher d(group);
    std::vector<float> x(4 * kHidden, 1.0f), w(4, 1.0f);
    std::vector<int32_t> idx = {0, 1, 2, 3};
    ExpertBatch b = d.dispatch(TensorView::matrix(x.data(), DType::kF32, 4, kHidden),
                               TensorView::matrix(idx.data(), DType::kI32, 4, 1),
                               TensorView::matrix(w.data(), DType::kF32, 4, 1));
    Tensor y = Tensor::zeros({b.x.dim(0) + (rank == 1 ? 1 : 0), kHidden}, DType::kF32);
    std::vector<float> out(4 * kHidden, -7.0f);
    try {
      d.combine(y, b.handle, TensorView::matrix(out.data(), DType::kF32, 4, kHidden));
      FAIL() << "rank " << rank << ": combine accepted a wrong y";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), rank == 1 ? StatusCode::kInvalidArgument : StatusCode::kRemoteError)
          << e.what();
    }
    for (float v : out) ASSERT_EQ(v, -7.0f);  // nothing half-written
    // A handle from another group is refused too.
    EXPECT_THROW(
        d.combine(y, DispatchHandle(), TensorView::matrix(out.data(), DType::kF32, 4, kHidden)),
        Error);
  });
}

TEST(BadInput, ARankThatSkipsDispatchTimesOutTheOthers) {
  runRanks(3, [](RankWorld& world, int rank) {
    Group group = world.group(rank, config(3, 1, 300));
    if (rank == 0) return;
    Dispatcher d(group);
    std::vector<float> x(kHidden, 1.0f), w(1, 1.0f);
    std::vector<int32_t> idx = {1};
    try {
      d.dispatch(TensorView::matrix(x.data(), DType::kF32, 1, kHidden),
                 TensorView::matrix(idx.data(), DType::kI32, 1, 1),
                 TensorView::matrix(w.data(), DType::kF32, 1, 1));
      FAIL() << "dispatch finished without rank 0";
    } catch (const Error& e) {
      // A transport that sees rank 0 leave (ucx) says so at once; one that cannot (local)
      // times out. Either way the message names rank 0.
      const std::string what = e.what();
      if (e.code() == StatusCode::kRemoteError) {
        EXPECT_NE(what.find("rank 0 is unreachable"), std::string::npos) << what;
      } else {
        EXPECT_EQ(e.code(), StatusCode::kTimeout) << what;
        EXPECT_NE(what.find("no data from rank(s) 0"), std::string::npos) << what;
      }
    }
  });
}

}  // namespace

namespace {

using namespace moecomm;
using namespace moecomm::testing;

// Global capacity: every rank sends all 6 of its tokens to expert 0 (on rank 0), which accepts 10.
TEST(GlobalCapacity, ReceiverTruncatesInSourceOrderAndRefusedSlotsContributeNothing) {
  for (bool pad : {false, true}) {
    runRanks(3, [&](RankWorld& world, int rank) {
      Group group = world.group(rank, {6, 8, DType::kF32, 2, 20000, "local"});
      DispatchOptions options;
      options.expert_capacity = 10;
      options.pad_to_capacity = pad;
      options.expert_alignment = 4;
      Dispatcher d(group, options);
      const int64_t T = 6;
      std::vector<float> x(T * 8), w(T * 2);
      std::vector<int32_t> idx(T * 2);
      for (int64_t t = 0; t < T; ++t) {
        for (int h = 0; h < 8; ++h) x[t * 8 + h] = float(rank * 100 + t);
        idx[t * 2] = 0;                       // the hot expert
        idx[t * 2 + 1] = int32_t(2 + t % 4);  // a cold one elsewhere
        w[t * 2] = 0.5f;
        w[t * 2 + 1] = 0.25f;
      }
      ExpertBatch b = d.dispatch(TensorView::matrix(x.data(), DType::kF32, T, 8),
                                 TensorView::matrix(idx.data(), DType::kI32, T, 2),
                                 TensorView::matrix(w.data(), DType::kF32, T, 2));
      if (rank == 0) {
        EXPECT_EQ(b.expert_demand[0], 18);
        EXPECT_EQ(b.expert_counts[0], 10);
        EXPECT_EQ(b.refused, 8);
        // Rank 0's six tokens, then rank 1's first four.
        for (int64_t r = 0; r < 10; ++r) {
          EXPECT_EQ(b.x.as<float>()[r * 8], r < 6 ? float(r) : float(100 + r - 6));
        }
        EXPECT_EQ(b.expert_offsets[1], 12);  // 10 rounded up to the alignment 4
        EXPECT_EQ(b.expert_offsets[2] - b.expert_offsets[1],
                  pad ? 12 : 0);  // expert 1 gets nothing
      } else {
        EXPECT_EQ(b.refused, 0);
      }
      // Identity experts: out = 0.5 x if the hot slot was accepted, plus 0.25 x from the cold one.
      Tensor out = d.combine(b.x, b.handle);
      Tensor grad_y = Tensor::empty({b.x.dim(0), 8}, DType::kF32);
      Tensor grad_w = Tensor::empty({T, 2}, DType::kF32);
      std::vector<float> ones(T * 8, 1.0f);
      d.combineBackward(TensorView::matrix(ones.data(), DType::kF32, T, 8), b.x, b.handle, grad_y,
                        grad_w);
      for (int64_t t = 0; t < T; ++t) {
        const bool accepted = rank == 0 || (rank == 1 && t < 4);
        const float v = float(rank * 100 + t);
        EXPECT_FLOAT_EQ(out.as<float>()[t * 8], (accepted ? 0.5f : 0.0f) * v + 0.25f * v)
            << "rank " << rank << " token " << t;
        EXPECT_FLOAT_EQ(grad_w.as<float>()[t * 2], accepted ? 8 * v : 0.0f);
        EXPECT_FLOAT_EQ(grad_w.as<float>()[t * 2 + 1], 8 * v);
      }
    });
  }
}

// Sync-free dispatch on the host path: the same batch as a padded dispatch, with its counts in
// device_counts (here a host tensor) and the host vectors empty until collectCounts.
TEST(SyncFree, CountsWaitInDeviceCountsUntilCollected) {
  runRanks(3, [&](RankWorld& world, int rank) {
    Group group = world.group(rank, {6, 8, DType::kF32, 2, 20000, "local"});
    DispatchOptions padded;
    padded.expert_capacity = 5;
    padded.pad_to_capacity = true;
    padded.expert_alignment = 4;
    DispatchOptions sync_free = padded;
    sync_free.sync_free = true;
    Dispatcher exact(group, padded), deferred(group, sync_free);
    const int64_t T = 4 + 3 * rank;
    std::mt19937 rng(static_cast<unsigned>(rank + 11));
    std::vector<float> x(static_cast<size_t>(T * 8)), w(static_cast<size_t>(T * 2));
    std::vector<int32_t> idx(static_cast<size_t>(T * 2));
    for (float& v : x) v = std::uniform_real_distribution<float>(-1, 1)(rng);
    for (int64_t t = 0; t < T; ++t) {
      idx[t * 2] = int32_t(rng() % 6);
      idx[t * 2 + 1] = t % 3 == 0 ? -1 : int32_t((idx[t * 2] + 1 + rng() % 5) % 6);
      w[t * 2] = 0.75f;
      w[t * 2 + 1] = 0.25f;
    }
    const auto xv = TensorView::matrix(x.data(), DType::kF32, T, 8);
    const auto iv = TensorView::matrix(idx.data(), DType::kI32, T, 2);
    const auto wv = TensorView::matrix(w.data(), DType::kF32, T, 2);
    const ExpertBatch a = exact.dispatch(xv, iv, wv);
    ExpertBatch b = deferred.dispatch(xv, iv, wv);
    ASSERT_EQ(b.x.dim(0), a.x.dim(0));
    EXPECT_EQ(0, std::memcmp(a.x.data(), b.x.data(), a.x.view().bytes()));
    EXPECT_EQ(
        0, std::memcmp(a.row_weights.data(), b.row_weights.data(), a.row_weights.view().bytes()));
    EXPECT_EQ(b.expert_offsets, a.expert_offsets);  // static: known without the counts
    EXPECT_TRUE(b.expert_counts.empty() && b.expert_demand.empty() && b.tokens_from_rank.empty());
    EXPECT_EQ(b.refused, -1);
    ASSERT_TRUE(b.device_counts.defined());
    ASSERT_EQ(b.device_counts.numel(), dispatchCountsSize(2, 3));
    const int64_t* c = b.device_counts.as<const int64_t>();
    for (int e = 0; e < 2; ++e) {
      EXPECT_EQ(c[e], a.expert_demand[e]);
      EXPECT_EQ(c[2 + e], a.expert_counts[e]);
    }
    for (int r = 0; r < 3; ++r) EXPECT_EQ(c[4 + r], a.tokens_from_rank[r]);
    EXPECT_EQ(c[7], a.refused);
    EXPECT_EQ(c[8], -1);
    EXPECT_EQ(c[9], -1);
    collectCounts(b);
    EXPECT_EQ(b.expert_counts, a.expert_counts);
    EXPECT_EQ(b.expert_demand, a.expert_demand);
    EXPECT_EQ(b.tokens_from_rank, a.tokens_from_rank);
    EXPECT_EQ(b.refused, a.refused);
    const Tensor out_a = exact.combine(a.x, a.handle);
    const Tensor out_b = deferred.combine(b.x, b.handle);
    EXPECT_EQ(0, std::memcmp(out_a.data(), out_b.data(), out_a.view().bytes()));
    EXPECT_FALSE(a.device_counts.defined());  // only sync-free batches carry them
  });
}

// Options that cannot work, on rank 1 only: both ranks fail with rank 1's message.
TEST(GlobalCapacity, BadOptionsAreRejectedOnEveryRank) {
  DispatchOptions no_capacity;
  no_capacity.pad_to_capacity = true;
  DispatchOptions unpadded_sync_free;
  unpadded_sync_free.expert_capacity = 4;
  unpadded_sync_free.sync_free = true;
  const std::pair<DispatchOptions, const char*> cases[] = {
      {no_capacity, "pad_to_capacity needs expert_capacity > 0"},
      {unpadded_sync_free, "sync_free needs pad_to_capacity"}};
  for (const auto& [bad, message] : cases) {
    runRanks(2, [&](RankWorld& world, int rank) {
      Group group = world.group(rank, {2, 8, DType::kF32, 1, 5000, "local"});
      Dispatcher d(group, rank == 1 ? bad : DispatchOptions{});
      std::vector<float> x(8, 1.0f), w(1, 1.0f);
      std::vector<int32_t> idx = {0};
      try {
        d.dispatch(TensorView::matrix(x.data(), DType::kF32, 1, 8),
                   TensorView::matrix(idx.data(), DType::kI32, 1, 1),
                   TensorView::matrix(w.data(), DType::kF32, 1, 1));
        FAIL() << "rank " << rank << " accepted options that fail with: " << message;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
      }
    });
  }
}

}  // namespace

namespace {

using namespace moecomm;
using namespace moecomm::testing;

TEST(Layout, CountsPerRankPerExpertAndTokenMembership) {
  runRanks(1, [](RankWorld& world, int rank) {
    // One rank cannot spread 6 experts over 3 ranks, so use a 1-rank group with 6 experts and
    // check the per-expert counts, then a 3-rank group below for the per-rank view.
    Group group = world.group(rank, {6, 4, DType::kF32, 2, 5000, "local"});
    std::vector<int64_t> idx = {0, 5, 5, -1, 2, 3, -1, -1};
    DispatchLayout layout = computeLayout(group, TensorView::matrix(idx.data(), DType::kI64, 4, 2));
    EXPECT_EQ(layout.tokens_per_expert, (std::vector<int64_t>{1, 0, 1, 1, 0, 2}));
    EXPECT_EQ(layout.tokens_per_rank, (std::vector<int64_t>{3}));
    EXPECT_EQ(layout.is_token_in_rank, (std::vector<uint8_t>{1, 1, 1, 0}));
  });
  runRanks(3, [](RankWorld& world, int rank) {
    Group group = world.group(rank, {6, 4, DType::kF32, 2, 5000, "local"});
    std::vector<int32_t> idx = {0, 1, 5, -1, 2, 4, -1, -1, 3, 1};
    DispatchLayout layout = computeLayout(group, TensorView::matrix(idx.data(), DType::kI32, 5, 2));
    // Token 0 visits rank 0 once (experts 0 and 1 both live there).
    EXPECT_EQ(layout.tokens_per_rank, (std::vector<int64_t>{2, 2, 2}));
    EXPECT_EQ(layout.is_token_in_rank,
              (std::vector<uint8_t>{1, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 1, 0}));
    std::vector<int32_t> bad = {0, 0};
    EXPECT_THROW(computeLayout(group, TensorView::matrix(bad.data(), DType::kI32, 1, 2)), Error);
  });
}

}  // namespace
