// The bootstraps below any transport: the in-process rendezvous, the TCP store that torchrun-style
// launches use (its ranks run as threads here, each with its own client connection), the launch
// variables, and the callback bootstrap.
#include <gtest/gtest.h>

#include <cstdlib>
#include <thread>
#include <vector>

#include "common/rank_runner.hpp"
#include "src/bootstrap/callback_bootstrap.hpp"
#include "src/bootstrap/in_process.hpp"
#include "src/bootstrap/store_bootstrap.hpp"

namespace {

using namespace moecomm;
using moecomm::testing::runThreads;

// A port per test, so tests running at once do not meet in one store.
LaunchEnv launchEnv(int rank, int size, int port) {
  return LaunchEnv{rank, size, rank, "127.0.0.1", port};
}

// Runs `body` on `size` threads, each with its own StoreBootstrap on `port`.
void runStoreRanks(int size, int port, const std::function<void(Bootstrap&)>& body) {
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      std::unique_ptr<Bootstrap> b;
      Status s = StoreBootstrap::create(launchEnv(r, size, port), Deadline::afterMs(10000), &b);
      ASSERT_TRUE(s.isOk()) << s.message();
      body(*b);
    });
  }
  for (auto& t : threads) t.join();
}

TEST(InProcessBootstrap, AllGatherOrdersByRankAndTimesOutNamingAbsentRanks) {
  runThreads(4, [&](LocalWorld& world, int rank) {
    InProcessBootstrap b(world.state(), rank);
    int64_t mine = 1000 + rank;
    std::vector<int64_t> all(4);
    ASSERT_TRUE(b.allGather(&mine, all.data(), sizeof(mine), Deadline::afterMs(10000)).isOk());
    for (int r = 0; r < 4; ++r) EXPECT_EQ(all[r], 1000 + r);
    if (rank == 3) return;  // rank 3 leaves; the others must not wait forever
    Status status = b.allGather(&mine, all.data(), sizeof(mine), Deadline::afterMs(200));
    EXPECT_TRUE(status.code() == StatusCode::kTimeout || status.code() == StatusCode::kRemoteError)
        << status.message();
    EXPECT_NE(status.message().find("3"), std::string::npos) << status.message();
  });
}

TEST(StoreBootstrap, AllGatherOrdersByRankAcrossManyRoundsOfChangingSize) {
  runStoreRanks(4, 29701, [](Bootstrap& b) {
    for (int round = 0; round < 20; ++round) {
      const size_t bytes = static_cast<size_t>(round * 37 % 300);
      std::vector<uint8_t> mine(bytes), all(bytes * 4);
      for (size_t i = 0; i < bytes; ++i) mine[i] = static_cast<uint8_t>(b.rank() * 50 + i + round);
      ASSERT_TRUE(b.allGather(mine.data(), all.data(), bytes, Deadline::afterMs(10000)).isOk());
      for (int r = 0; r < 4; ++r) {
        for (size_t i = 0; i < bytes; ++i) {
          ASSERT_EQ(all[r * bytes + i], static_cast<uint8_t>(r * 50 + i + round));
        }
      }
    }
    EXPECT_TRUE(b.barrier(Deadline::afterMs(10000)).isOk());
  });
}

TEST(StoreBootstrap, RanksThatStartBeforeTheStoreRetryUntilItIsUp) {
  std::thread late([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    std::unique_ptr<Bootstrap> b;
    ASSERT_TRUE(
        StoreBootstrap::create(launchEnv(0, 2, 29702), Deadline::afterMs(10000), &b).isOk());
    EXPECT_TRUE(b->barrier(Deadline::afterMs(10000)).isOk());
  });
  std::unique_ptr<Bootstrap> b;
  Status s = StoreBootstrap::create(launchEnv(1, 2, 29702), Deadline::afterMs(10000), &b);
  ASSERT_TRUE(s.isOk()) << s.message();
  EXPECT_TRUE(b->barrier(Deadline::afterMs(10000)).isOk());
  late.join();
}

TEST(StoreBootstrap, AbsentRanksAreNamedWhenTheDeadlinePasses) {
  std::unique_ptr<Bootstrap> b;
  ASSERT_TRUE(StoreBootstrap::create(launchEnv(0, 4, 29703), Deadline::afterMs(5000), &b).isOk());
  auto start = std::chrono::steady_clock::now();
  Status s = b->barrier(Deadline::afterMs(300));
  EXPECT_EQ(s.code(), StatusCode::kTimeout);
  EXPECT_NE(s.message().find("rank(s) 1-3"), std::string::npos) << s.message();
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(290));
}

TEST(StoreBootstrap, NoStoreMeansATimeoutThatSaysWhereItLooked) {
  std::unique_ptr<Bootstrap> b;
  Status s = StoreBootstrap::create(launchEnv(1, 2, 29704), Deadline::afterMs(300), &b);
  EXPECT_EQ(s.code(), StatusCode::kTimeout);
  EXPECT_NE(s.message().find("127.0.0.1:29704"), std::string::npos) << s.message();
}

TEST(StoreBootstrap, TheStoreRefusesADuplicateRankOrAnotherWorldSize) {
  std::unique_ptr<Bootstrap> zero, one, twin, other;
  ASSERT_TRUE(
      StoreBootstrap::create(launchEnv(0, 3, 29705), Deadline::afterMs(5000), &zero).isOk());
  ASSERT_TRUE(StoreBootstrap::create(launchEnv(1, 3, 29705), Deadline::afterMs(5000), &one).isOk());
  Status s = StoreBootstrap::create(launchEnv(1, 3, 29705), Deadline::afterMs(5000), &twin);
  EXPECT_EQ(s.code(), StatusCode::kInvalidUsage);
  EXPECT_NE(s.message().find("two processes claim rank 1"), std::string::npos) << s.message();
  s = StoreBootstrap::create(launchEnv(2, 4, 29705), Deadline::afterMs(5000), &other);
  EXPECT_EQ(s.code(), StatusCode::kInvalidUsage);
  EXPECT_NE(s.message().find("4 ranks"), std::string::npos) << s.message();
}

TEST(StoreBootstrap, ARankThatFailsToStartItsStoreSaysWhichPort) {
  std::unique_ptr<Bootstrap> first, second;
  ASSERT_TRUE(
      StoreBootstrap::create(launchEnv(0, 2, 29706), Deadline::afterMs(5000), &first).isOk());
  // A second store on a port in use: bind fails with a message naming the port.
  Status s = StoreBootstrap::create(launchEnv(0, 2, 29706), Deadline::afterMs(5000), &second);
  EXPECT_EQ(s.code(), StatusCode::kSystemError) << s.message();
  EXPECT_NE(s.message().find("29706"), std::string::npos) << s.message();
}

// Environment variables are process-wide: these tests run single-threaded.
TEST(LaunchEnv, TorchrunVariablesWithMoecommOverrides) {
  setenv("RANK", "2", 1);
  setenv("WORLD_SIZE", "4", 1);
  setenv("MASTER_ADDR", "198.18.0.1", 1);
  setenv("MASTER_PORT", "29500", 1);
  unsetenv("LOCAL_RANK");
  setenv("MOECOMM_RANK", "3", 1);
  LaunchEnv env;
  Status s = readLaunchEnv(&env);
  ASSERT_TRUE(s.isOk()) << s.message();
  EXPECT_EQ(env.rank, 3);  // MOECOMM_RANK wins
  EXPECT_EQ(env.size, 4);
  EXPECT_EQ(env.local_rank, 3);  // defaults to the rank
  EXPECT_EQ(env.master_addr, "198.18.0.1");
  EXPECT_EQ(env.master_port, 29500);

  setenv("MOECOMM_RANK", "4", 1);
  s = readLaunchEnv(&env);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("RANK=4 is out of range"), std::string::npos) << s.message();
  setenv("MOECOMM_RANK", "one", 1);
  s = readLaunchEnv(&env);
  EXPECT_NE(s.message().find("MOECOMM_RANK='one' is not an integer"), std::string::npos)
      << s.message();
  unsetenv("MOECOMM_RANK");
  unsetenv("WORLD_SIZE");
  s = readLaunchEnv(&env);
  EXPECT_NE(s.message().find("WORLD_SIZE is not set"), std::string::npos) << s.message();
  for (const char* v : {"RANK", "MASTER_ADDR", "MASTER_PORT"}) unsetenv(v);
}

// A framework's process group, simulated by an in-process rendezvous behind the callbacks.
TEST(CallbackBootstrap, GroupsFormThroughTheFrameworksCollectives) {
  runThreads(3, [](LocalWorld& world, int rank) {
    InProcessBootstrap inner(world.state(), rank);
    BootstrapCallbacks callbacks;
    callbacks.rank = rank;
    callbacks.size = 3;
    callbacks.context = &inner;
    callbacks.all_gather = [](const void* in, void* out, size_t bytes, void* context) {
      auto* b = static_cast<InProcessBootstrap*>(context);
      return b->allGather(in, out, bytes, Deadline::afterMs(10000)).isOk() ? 0 : 1;
    };
    World w = World::fromCallbacks(callbacks);
    EXPECT_STREQ(w.kind(), "callback");
    // Threads of one process: "auto" picks the local transport.
    Group g = Group::create(w, {6, 4, DType::kF32, 2, 10000, "auto"});
    EXPECT_STREQ(g.transportName(), "local");
    EXPECT_EQ(g.rank(), rank);
    EXPECT_EQ(g.size(), 3);
  });
}

TEST(CallbackBootstrap, MissingCallbacksOrBadRanksAreRejected) {
  BootstrapCallbacks callbacks;
  callbacks.rank = 0;
  callbacks.size = 1;
  EXPECT_THROW(World::fromCallbacks(callbacks), Error);  // no all_gather
  callbacks.all_gather = [](const void*, void*, size_t, void*) { return 0; };
  callbacks.rank = 2;
  EXPECT_THROW(World::fromCallbacks(callbacks), Error);
}

}  // namespace
