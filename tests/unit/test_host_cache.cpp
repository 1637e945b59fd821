// The host caching allocator: large blocks come back for requests they fit, small ones and
// oversized matches go to the system, and release empties the cache.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "src/core/host_cache.hpp"

namespace {

using namespace moecomm;

TEST(HostCache, LargeBlocksAreReusedWhenTheyFit) {
  hostCacheRelease();
  size_t cap_a = 0;
  void* a = hostAlloc(3u << 20, &cap_a);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 64, 0u);
  EXPECT_GE(cap_a, 3u << 20);
  std::memset(a, 7, 3u << 20);
  hostFree(a, cap_a);
  size_t cap_b = 0;
  void* b = hostAlloc((5u << 19) + 1, &cap_b);  // 2.5 MiB + 1 fits the cached 3 MiB block
  EXPECT_EQ(b, a);
  EXPECT_EQ(cap_b, cap_a);
  size_t cap_c = 0;
  void* c = hostAlloc(1u << 20, &cap_c);  // would waste more than half of a 3 MiB block
  EXPECT_NE(c, a);
  hostFree(b, cap_b);
  hostFree(c, cap_c);
  hostCacheRelease();
  size_t cap_d = 0;
  void* d = hostAlloc(100, &cap_d);  // small: straight from the system, rounded to 64
  EXPECT_EQ(cap_d, 128u);
  hostFree(d, cap_d);
}

TEST(HostCache, MidSizedBlocksAreCachedByPowersOfTwo) {
  hostCacheRelease();
  size_t cap_a = 0;
  void* a = hostAlloc(128u << 10, &cap_a);  // a router output: 4096 tokens x 8 x 4 bytes
  EXPECT_EQ(cap_a, 128u << 10);
  std::memset(a, 1, 128u << 10);
  hostFree(a, cap_a);
  size_t cap_b = 0;
  void* b = hostAlloc(100u << 10, &cap_b);  // rounds up to the same 128 KiB block
  EXPECT_EQ(b, a);
  EXPECT_EQ(cap_b, 128u << 10);
  size_t cap_c = 0;
  void* c = hostAlloc(40u << 10, &cap_c);  // under 64 KiB: malloc's, never the cached block
  EXPECT_NE(c, a);
  EXPECT_EQ(cap_c, 40u << 10);
  size_t cap_d = 0;
  void* d = hostAlloc((1u << 20) + 1, &cap_d);  // past the granule: whole MiB
  EXPECT_EQ(cap_d, 2u << 20);
  hostFree(b, cap_b);
  hostFree(c, cap_c);
  hostFree(d, cap_d);
  hostCacheRelease();
}

}  // namespace
