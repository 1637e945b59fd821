// Router::routeOnStream and Router::collectStats on host logits: the same routing as route(),
// device_stats in its documented layout, and the deferred errors (a non-finite token, an overflow
// under kError) raised by collectStats exactly as route() raises them. The GPU half is in
// tests/gpu/test_gpu_engine.cpp.
#include <gtest/gtest.h>

#include <moecomm/moecomm.hpp>
#include "common/reference.hpp"

#include <cstring>
#include <string>
#include <vector>

namespace {

using moecomm::testing::randomNormal;

using namespace moecomm;

RouterOptions withCapacity(OverflowPolicy overflow) {
  RouterOptions o;
  o.topk = 2;
  o.capacity_factor = 0.75;
  o.overflow = overflow;
  return o;
}

void expectSameStats(const LoadStats& a, const LoadStats& b) {
  EXPECT_EQ(a.demand_per_expert, b.demand_per_expert);
  EXPECT_EQ(a.tokens_per_expert, b.tokens_per_expert);
  EXPECT_EQ(a.capacity, b.capacity);
  EXPECT_EQ(a.dropped, b.dropped);
  EXPECT_EQ(a.rerouted, b.rerouted);
  EXPECT_EQ(a.imbalance, b.imbalance);
}

TEST(RouteOnStream, HostLogitsGiveRouteAndItsStatsInTheDocumentedLayout) {
  const int E = 16;
  for (OverflowPolicy overflow : {OverflowPolicy::kDrop, OverflowPolicy::kReroute}) {
    const Router router(withCapacity(overflow));
    const Tensor logits = randomNormal(200, E, 5, 1.5f);
    const Routing want = router.route(logits.view());
    Routing got = router.routeOnStream(logits.view());
    ASSERT_EQ(std::memcmp(want.topk_idx.data(), got.topk_idx.data(), want.topk_idx.bytes()), 0);
    ASSERT_EQ(got.device_stats.numel(), deviceStatsSize(E));
    const int64_t* v = got.device_stats.as<int64_t>();
    for (int e = 0; e < E; ++e) {
      EXPECT_EQ(v[e], want.stats.demand_per_expert[e]) << "demand of expert " << e;
      EXPECT_EQ(v[E + e], want.stats.tokens_per_expert[e]) << "load of expert " << e;
    }
    EXPECT_EQ(v[2 * E], want.stats.dropped);
    EXPECT_EQ(v[2 * E + 1], want.stats.rerouted);
    EXPECT_EQ(v[2 * E + 2], -1);
    EXPECT_EQ(v[2 * E + 3], -1);
    EXPECT_GT(want.stats.dropped + want.stats.rerouted, 0) << "the case must exercise capacity";
    // Collected from device_stats alone, the statistics are route()'s.
    got.stats = {};
    expectSameStats(router.collectStats(got), want.stats);
  }
}

// A routing as the GPU leaves it when a token had a non-finite logit or an expert overflowed
// under kError: collectStats raises what route() raises.
TEST(RouteOnStream, CollectStatsRaisesTheDeferredErrors) {
  const int E = 8;
  const Router error_router(withCapacity(OverflowPolicy::kError));
  const Tensor logits = randomNormal(64, E, 9, 1.5f);
  Routing r = Router(withCapacity(OverflowPolicy::kDrop)).routeOnStream(logits.view());
  r.stats = {};
  int64_t* v = r.device_stats.as<int64_t>();
  v[2 * E + 2] = 17;
  try {
    error_router.collectStats(r);
    FAIL() << "a non-finite token must be raised";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("row 17"), std::string::npos) << e.what();
  }
  v[2 * E + 2] = -1;
  const int64_t slot = 5;
  const int32_t expert = r.topk_idx.as<int32_t>()[slot];
  ASSERT_GE(expert, 0);
  v[2 * E + 3] = slot;
  try {
    error_router.collectStats(r);
    FAIL() << "an overflow under kError must be raised";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("expert " + std::to_string(expert) + " is over capacity"),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(r.stats.demand_per_expert.empty()) << "a failed collect must not fill stats";
  // The same overflow under kDrop is no error: the slot is only kError's report.
  expectSameStats(Router(withCapacity(OverflowPolicy::kDrop)).collectStats(r),
                  Router(withCapacity(OverflowPolicy::kDrop)).route(logits.view()).stats);
}

TEST(RouteOnStream, MalformedDeviceStatsAreRefused) {
  RouterOptions o;
  o.topk = 1;
  const Router router(o);
  Routing r = router.routeOnStream(randomNormal(4, 4, 1, 1.5f).view());
  r.stats = {};
  r.device_stats = Tensor::empty({7}, DType::kI64);
  EXPECT_THROW(router.collectStats(r), Error);
  r.device_stats = Tensor::empty({12}, DType::kI32);
  EXPECT_THROW(router.collectStats(r), Error);
}

}  // namespace
