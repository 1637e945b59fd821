// Group creation: agreement on the configuration, clear errors, and no hang when ranks disagree.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>

#include "common/rank_runner.hpp"

namespace {

using namespace moecomm;
using moecomm::testing::runThreads;

GroupConfig baseConfig() {
  GroupConfig c;
  c.num_experts = 12;
  c.hidden = 64;
  c.dtype = DType::kBF16;
  c.topk = 2;
  c.timeout_ms = 10000;
  return c;
}

// Runs a group creation where `mutate` changes rank `odd_rank`'s config, and returns each rank's
// error message ("" when it succeeded).
std::vector<std::string> createWithOddRank(int ranks, int odd_rank,
                                           const std::function<void(GroupConfig&)>& mutate,
                                           std::vector<StatusCode>* codes) {
  std::vector<std::string> messages(ranks);
  codes->assign(ranks, StatusCode::kSuccess);
  runThreads(ranks, [&](LocalWorld& world, int rank) {
    GroupConfig c = baseConfig();
    if (rank == odd_rank) mutate(c);
    try {
      Group::create(world, rank, c);
    } catch (const Error& e) {
      messages[rank] = e.what();
      (*codes)[rank] = e.code();
    }
  });
  return messages;
}

TEST(Group, CreatesAndReportsPlacement) {
  runThreads(4, [](LocalWorld& world, int rank) {
    Group g = Group::create(world, rank, baseConfig());
    EXPECT_EQ(g.rank(), rank);
    EXPECT_EQ(g.size(), 4);
    EXPECT_EQ(g.localExperts(), 3);
    EXPECT_EQ(g.firstLocalExpert(), 3 * rank);
    EXPECT_EQ(g.expertOwner(11), 3);
    EXPECT_EQ(g.expertOwner(12), -1);
    EXPECT_STREQ(g.transportName(), "local");
  });
}

TEST(Group, MismatchedHiddenFailsEveryRankNamingTheRankAndField) {
  std::vector<StatusCode> codes;
  auto messages = createWithOddRank(
      3, 2, [](GroupConfig& c) { c.hidden = 128; }, &codes);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(codes[r], StatusCode::kInvalidArgument) << messages[r];
    EXPECT_NE(messages[r].find("rank 2 has hidden=128 but rank 0 has hidden=64"), std::string::npos)
        << messages[r];
  }
}

TEST(Group, MismatchedTopkAndDtypeAreNamed) {
  std::vector<StatusCode> codes;
  auto m1 = createWithOddRank(
      2, 1, [](GroupConfig& c) { c.topk = 3; }, &codes);
  EXPECT_NE(m1[0].find("topk"), std::string::npos) << m1[0];
  auto m2 = createWithOddRank(
      2, 0, [](GroupConfig& c) { c.dtype = DType::kF32; }, &codes);
  EXPECT_NE(m2[1].find("dtype=bf16 but rank 0 has dtype=f32"), std::string::npos) << m2[1];
}

TEST(Group, InvalidConfigOnOneRankFailsTheOthersWithRemoteError) {
  std::vector<StatusCode> codes;
  auto messages = createWithOddRank(
      3, 1, [](GroupConfig& c) { c.topk = 0; }, &codes);
  EXPECT_EQ(codes[1], StatusCode::kInvalidArgument);
  EXPECT_EQ(codes[0], StatusCode::kRemoteError);
  EXPECT_NE(messages[0].find("rank 1 rejected its config"), std::string::npos) << messages[0];
}

TEST(Group, ExpertsNotDivisibleByRanksIsAClearError) {
  runThreads(3, [](LocalWorld& world, int rank) {
    GroupConfig c = baseConfig();
    c.num_experts = 8;  // over 3 ranks
    try {
      Group::create(world, rank, c);
      FAIL() << "accepted 8 experts on 3 ranks";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), StatusCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("num_experts=8 is not divisible by the 3 ranks"),
                std::string::npos)
          << e.what();
    }
  });
}

TEST(Group, UnknownTransportAndBadRankAreRejected) {
  runThreads(1, [](LocalWorld& world, int rank) {
    GroupConfig c = baseConfig();
    c.transport = "carrier-pigeon";
    EXPECT_THROW(Group::create(world, rank, c), Error);
    EXPECT_THROW(Group::create(world, 5, baseConfig()), Error);
  });
  EXPECT_THROW(LocalWorld(0), Error);
}

TEST(Group, ARankThatNeverArrivesTimesOutTheOthers) {
  runThreads(3, [](LocalWorld& world, int rank) {
    if (rank == 2) return;
    GroupConfig c = baseConfig();
    c.num_experts = 6;
    c.timeout_ms = 300;
    try {
      Group::create(world, rank, c);
      FAIL() << "created a group without rank 2";
    } catch (const Error& e) {
      EXPECT_TRUE(e.code() == StatusCode::kTimeout || e.code() == StatusCode::kRemoteError);
      EXPECT_NE(std::string(e.what()).find("2"), std::string::npos) << e.what();
    }
  });
}

}  // namespace
