// Every transport below any MoE logic: matching, zero/odd/skewed/changing sizes, truncation,
// deadlines, cancellation and two instances alive at once. The transport is the one the test
// groups get (MOECOMM_TEST_TRANSPORT), so this suite runs on local, ucx and mpi alike.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "common/rank_runner.hpp"
#include "src/group/group_impl.hpp"

namespace {

using namespace moecomm;
using moecomm::testing::RankWorld;
using moecomm::testing::runRanks;

// A group exists only to carry the transport under test and its bootstrap.
Group transportGroup(RankWorld& world, int rank, int ranks) {
  return world.group(rank, {ranks, 8, DType::kF32, 1, 20000, "local"});
}
Transport* transportOf(const Group& group) {
  return group.impl().transport.get();
}
Bootstrap* bootstrapOf(const Group& group) {
  return group.impl().bootstrap.get();
}

std::vector<uint8_t> pattern(int from, int to, size_t bytes, int round) {
  std::vector<uint8_t> v(bytes);
  for (size_t i = 0; i < bytes; ++i)
    v[i] = static_cast<uint8_t>(from * 31 + to * 7 + round + i * 13);
  return v;
}

// An all-to-all-v where rank r sends size(r, p, round) bytes to p.
void allToAllV(Transport& t, int round, const std::function<size_t(int, int)>& size) {
  const int n = t.size(), me = t.rank();
  std::vector<std::vector<uint8_t>> out(n), in(n);
  std::vector<Request> requests;
  for (int p = 0; p < n; ++p) {
    in[p].assign(size(p, me) + 3, 0xee);  // a little spare capacity that must stay untouched
    Request r;
    ASSERT_TRUE(t.postRecv(p, in[p].data(), in[p].size(), 100 + round, &r).isOk());
    requests.push_back(r);
  }
  for (int i = 1; i <= n; ++i) {
    int p = (me + i) % n;
    out[p] = pattern(me, p, size(me, p), round);
    Request r;
    ASSERT_TRUE(t.postSend(p, out[p].data(), out[p].size(), 100 + round, &r).isOk());
    requests.push_back(r);
  }
  Status status = t.waitAll(requests, Deadline::afterMs(20000), "test all-to-all");
  ASSERT_TRUE(status.isOk()) << status.message();
  for (int p = 0; p < n; ++p) {
    auto expected = pattern(p, me, size(p, me), round);
    EXPECT_EQ(requests[p]->bytes, expected.size());
    EXPECT_FALSE(requests[p]->truncated);
    EXPECT_TRUE(std::equal(expected.begin(), expected.end(), in[p].begin()));
    EXPECT_EQ(in[p][expected.size()], 0xee);
  }
}

class TransportRanks : public ::testing::TestWithParam<int> {};

TEST_P(TransportRanks, ZeroOddSkewedAndChangingSizes) {
  const int n = GetParam();
  runRanks(n, [&](RankWorld& world, int rank) {
    Group group = transportGroup(world, rank, n);
    Transport* t = transportOf(group);
    allToAllV(*t, 0, [](int, int) { return size_t{0}; });
    allToAllV(*t, 1, [](int a, int b) { return size_t(1 + 2 * a + 5 * b); });
    allToAllV(*t, 2, [](int, int b) { return b == 0 ? size_t(1 << 20) + 7 : size_t{0}; });
    for (int round = 3; round < 40; ++round) {
      allToAllV(*t, round,
                [round](int a, int b) { return size_t((a * 977 + b * 131 + round * 71) % 5000); });
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, TransportRanks, ::testing::Values(1, 2, 3, 4, 8));

TEST(Transport, TagsMatchOutOfOrderAndTruncationIsReported) {
  runRanks(2, [&](RankWorld& world, int rank) {
    Group group = transportGroup(world, rank, 2);
    Transport* t = transportOf(group);
    if (rank == 0) {
      int a = 1, b = 2;
      char big[16] = "0123456789abcde";
      Request r1, r2, r3;
      ASSERT_TRUE(t->postSend(1, &a, sizeof(a), 7, &r1).isOk());
      ASSERT_TRUE(t->postSend(1, &b, sizeof(b), 8, &r2).isOk());
      ASSERT_TRUE(t->postSend(1, big, sizeof(big), 9, &r3).isOk());
      ASSERT_TRUE(t->waitAll({r1, r2, r3}, Deadline::afterMs(10000), "sends").isOk());
    } else {
      int a = 0, b = 0;
      char small[4] = {};
      Request r2, r1, r3;
      ASSERT_TRUE(t->postRecv(0, &b, sizeof(b), 8, &r2).isOk());  // tag 8 first
      ASSERT_TRUE(t->postRecv(0, &a, sizeof(a), 7, &r1).isOk());
      ASSERT_TRUE(t->postRecv(0, small, sizeof(small), 9, &r3).isOk());
      ASSERT_TRUE(t->waitAll({r1, r2, r3}, Deadline::afterMs(10000), "recvs").isOk());
      EXPECT_EQ(a, 1);
      EXPECT_EQ(b, 2);
      EXPECT_TRUE(r3->truncated);
      EXPECT_EQ(r3->bytes, sizeof(small));
      if (std::string(t->name()) != "ucx") {
        EXPECT_EQ(std::memcmp(small, "0123", 4), 0);
      }
    }
  });
}

TEST(Transport, WaitHonoursItsDeadlineAndNamesTheSilentPeer) {
  runRanks(3, [&](RankWorld& world, int rank) {
    Group group = transportGroup(world, rank, 3);
    Transport* t = transportOf(group);
    Bootstrap* bootstrap = bootstrapOf(group);
    if (rank == 0) {
      int from1 = 0, from2 = 0;
      Request r1, r2;
      ASSERT_TRUE(t->postRecv(1, &from1, sizeof(int), 1, &r1).isOk());
      ASSERT_TRUE(t->postRecv(2, &from2, sizeof(int), 1, &r2).isOk());
      auto start = std::chrono::steady_clock::now();
      Status status = t->waitAll({r1, r2}, Deadline::afterMs(300), "the test exchange");
      auto waited = std::chrono::steady_clock::now() - start;
      EXPECT_EQ(status.code(), StatusCode::kTimeout);
      EXPECT_NE(status.message().find("no data from rank(s) 2"), std::string::npos)
          << status.message();
      EXPECT_GE(waited, std::chrono::milliseconds(290));  // the deadline, not an early return
      EXPECT_EQ(from1, 11);
      // The cancelled receive is gone: a late send to it stays queued and never writes.
      EXPECT_TRUE(bootstrap->barrier(Deadline::afterMs(10000)).isOk());
      EXPECT_TRUE(bootstrap->barrier(Deadline::afterMs(10000)).isOk());
      EXPECT_EQ(from2, 0);
    } else if (rank == 1) {
      int value = 11;
      Request r;
      ASSERT_TRUE(t->postSend(0, &value, sizeof(int), 1, &r).isOk());
      ASSERT_TRUE(t->wait(r, Deadline::afterMs(10000)).isOk());
      EXPECT_TRUE(bootstrap->barrier(Deadline::afterMs(10000)).isOk());
      EXPECT_TRUE(bootstrap->barrier(Deadline::afterMs(10000)).isOk());
    } else {
      EXPECT_TRUE(bootstrap->barrier(Deadline::afterMs(10000)).isOk());
      int value = 22;
      Request r;
      ASSERT_TRUE(t->postSend(0, &value, sizeof(int), 1, &r).isOk());
      // The local transport holds a send until it is matched; ucx and mpi buffer small ones.
      Status sent = t->wait(r, Deadline::afterMs(100));
      if (std::string(t->name()) == "local") {
        EXPECT_EQ(sent.code(), StatusCode::kTimeout);
      } else {
        EXPECT_TRUE(sent.isOk() || sent.code() == StatusCode::kTimeout) << sent.message();
      }
      t->cancel(r);
      EXPECT_TRUE(bootstrap->barrier(Deadline::afterMs(10000)).isOk());
    }
  });
}

TEST(Transport, TwoInstancesAliveAtOnceDoNotCrossTalk) {
  runRanks(2, [&](RankWorld& world, int rank) {
    Group g1 = transportGroup(world, rank, 2);
    Group g2 = transportGroup(world, rank, 2);
    Transport* t1 = transportOf(g1);
    Transport* t2 = transportOf(g2);
    int peer = 1 - rank;
    int send1 = 100 + rank, send2 = 200 + rank, got1 = 0, got2 = 0;
    Request r[4];
    ASSERT_TRUE(t2->postRecv(peer, &got2, sizeof(int), 5, &r[0]).isOk());
    ASSERT_TRUE(t1->postRecv(peer, &got1, sizeof(int), 5, &r[1]).isOk());
    ASSERT_TRUE(t1->postSend(peer, &send1, sizeof(int), 5, &r[2]).isOk());
    ASSERT_TRUE(t2->postSend(peer, &send2, sizeof(int), 5, &r[3]).isOk());
    ASSERT_TRUE(t1->waitAll({r[1], r[2]}, Deadline::afterMs(10000), "t1").isOk());
    ASSERT_TRUE(t2->waitAll({r[0], r[3]}, Deadline::afterMs(10000), "t2").isOk());
    EXPECT_EQ(got1, 100 + peer);
    EXPECT_EQ(got2, 200 + peer);
  });
}

TEST(Transport, RejectsPeersOutOfRange) {
  runRanks(1, [&](RankWorld& world, int rank) {
    Group group = transportGroup(world, rank, 1);
    Transport* t = transportOf(group);
    int v = 0;
    Request r;
    EXPECT_EQ(t->postSend(1, &v, sizeof(v), 0, &r).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(t->postRecv(-1, &v, sizeof(v), 0, &r).code(), StatusCode::kInvalidArgument);
  });
}

// One-sided puts into registered windows: every rank writes its block into every peer's window
// (itself included), and a peer that has the notice finds the data in place. Sizes change each
// round; the two halves of the window alternate as a caller double-buffers.
TEST_P(TransportRanks, PutsLandBeforeTheirNotices) {
  const int n = GetParam();
  runRanks(n, [&](RankWorld& world, int rank) {
    Group group = transportGroup(world, rank, n);
    Transport* t = transportOf(group);
    if (!t->supportsPut()) GTEST_SKIP() << t->name() << " has no puts";
    const size_t max_block = (1 << 18) + 5;
    std::unique_ptr<Window> window;
    Status made = t->createWindow(2 * n * max_block, Deadline::afterMs(20000), &window);
    ASSERT_TRUE(made.isOk()) << made.message();
    ASSERT_GE(window->bytes, 2 * n * max_block);
    for (int round = 0; round < 12; ++round) {
      auto size = [&](int from, int to) {
        return size_t((from * 7919 + to * 104729 + round * 1299709) % max_block) * (round % 4 != 1);
      };
      const size_t half = (round % 2) * n * max_block;
      std::vector<std::vector<uint8_t>> out(n);
      std::vector<Request> requests;
      for (int p = 0; p < n; ++p) {
        Request r;
        ASSERT_TRUE(t->postRecv(p, nullptr, 0, 500 + round, &r).isOk());
        requests.push_back(r);
      }
      for (int i = 0; i < n; ++i) {
        const int p = (rank + i) % n;
        out[p] = pattern(rank, p, size(rank, p), round);
        Request r;
        Status put = t->postPut(*window, p, half + rank * max_block, out[p].data(), out[p].size(),
                                500 + round, &r);
        ASSERT_TRUE(put.isOk()) << put.message();
        requests.push_back(r);
      }
      Status waited = t->waitAll(requests, Deadline::afterMs(20000), "puts");
      ASSERT_TRUE(waited.isOk()) << waited.message();
      for (int p = 0; p < n; ++p) {
        auto expected = pattern(p, rank, size(p, rank), round);
        ASSERT_TRUE(std::equal(expected.begin(), expected.end(),
                               reinterpret_cast<uint8_t*>(window->data) + half + p * max_block))
            << "round " << round << " block from rank " << p;
      }
    }
    uint8_t byte = 0;
    Request r;
    EXPECT_EQ(t->postPut(*window, 0, window->bytes, &byte, 1, 1, &r).code(),
              StatusCode::kInvalidArgument);
  });
}

}  // namespace
