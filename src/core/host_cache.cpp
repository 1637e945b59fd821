#include "src/core/host_cache.hpp"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

#include "src/core/env.hpp"

namespace moecomm {

namespace {

// Smaller blocks come from malloc's own bins. From 64 KiB, malloc maps fresh pages or trims its
// heap often enough that a router's outputs (4096 x 8 x 4 bytes) fault on every call.
constexpr size_t kCachedFrom = size_t{64} << 10;
constexpr size_t kGranule = size_t{1} << 20;

// Cached sizes: powers of two below the granule (so a block fits requests down to half of it),
// whole granules above.
size_t cachedSize(size_t bytes) {
  if (bytes >= kGranule) return (bytes + kGranule - 1) / kGranule * kGranule;
  size_t size = kCachedFrom;
  while (size < bytes) size *= 2;
  return size;
}

struct HostCache {
  std::mutex mutex;
  std::multimap<size_t, void*> free_blocks;  // capacity -> block
  size_t cached = 0;
  const size_t limit =
      static_cast<size_t>(std::max<int64_t>(0, envInt("MOECOMM_HOST_CACHE_MB", 2048))) << 20;
};

// Never destroyed: tensors may be freed during static destruction.
HostCache& cache() {
  static HostCache* instance = new HostCache();
  return *instance;
}

}  // namespace

void* hostAlloc(size_t bytes, size_t* capacity) {
  if (bytes < kCachedFrom) {
    *capacity = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, *capacity);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  const size_t want = cachedSize(bytes);
  {
    HostCache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    // The smallest cached block that fits, unless it would waste more than half of itself.
    auto it = c.free_blocks.lower_bound(want);
    if (it != c.free_blocks.end() && it->first <= 2 * want) {
      *capacity = it->first;
      void* p = it->second;
      c.cached -= it->first;
      c.free_blocks.erase(it);
      return p;
    }
  }
  *capacity = want;
  void* p = std::aligned_alloc(64, want);
  if (p == nullptr) {
    hostCacheRelease();  // the cache may hold what the system needs
    p = std::aligned_alloc(64, want);
    if (p == nullptr) throw std::bad_alloc();
  }
  return p;
}

void hostFree(void* block, size_t capacity) {
  if (block == nullptr) return;
  if (capacity >= kCachedFrom) {
    HostCache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.cached + capacity <= c.limit) {
      c.free_blocks.emplace(capacity, block);
      c.cached += capacity;
      return;
    }
  }
  std::free(block);
}

void hostCacheRelease() {
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (auto& [capacity, block] : c.free_blocks) std::free(block);
  c.free_blocks.clear();
  c.cached = 0;
}

}  // namespace moecomm
