// A device allocator for tests that keeps a ledger: every live block with the bytes, GPU and
// stream it was allocated with, so a test can check that each block goes back exactly once, with
// those same arguments, to the allocator that made it. The memory itself comes from the functions
// it is given (host malloc where no GPU runs, cudaMallocAsync in tests/gpu). No GoogleTest here:
// the GPU tests build without it.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>

#include "moecomm/allocator.hpp"

namespace moecomm::testing {

class LedgerAllocator final : public DeviceAllocator {
 public:
  using Take = void* (*)(size_t bytes, void* stream);
  using Give = void (*)(void* ptr, void* stream);
  struct Block {
    size_t bytes;
    int device;
    void* stream;
  };
  struct Counts {
    int allocations;
    size_t live;
    int mismatches;  // releases of unknown blocks, or with other bytes, GPU or stream
  };

  LedgerAllocator(Take take, Give give) : take_(take), give_(give) {}

  void* allocate(size_t bytes, int device, void* stream) override {
    void* p = take_(bytes, stream);
    if (p == nullptr) return nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    live_[p] = {bytes, device, stream};
    ++allocations_;
    return p;
  }
  void release(void* ptr, size_t bytes, int device, void* stream) noexcept override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = live_.find(ptr);
      if (found == live_.end()) {
        ++mismatches_;
      } else {
        const Block& b = found->second;
        if (b.bytes != bytes || b.device != device || b.stream != stream) ++mismatches_;
        live_.erase(found);
      }
    }
    give_(ptr, stream);
  }
  const char* name() const noexcept override { return "ledger"; }

  Counts counts() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {allocations_, live_.size(), mismatches_};
  }
  // The live block at `ptr` (throws std::out_of_range when there is none).
  Block block(void* ptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    return live_.at(ptr);
  }

 private:
  Take take_;
  Give give_;
  std::mutex mutex_;
  std::map<void*, Block> live_;
  int allocations_ = 0;
  int mismatches_ = 0;
};

// Host memory behind "GPU" tensors, for the CPU suites: nothing may read it, the tests only follow
// where it goes.
inline std::shared_ptr<LedgerAllocator> hostLedgerAllocator() {
  return std::make_shared<LedgerAllocator>([](size_t bytes, void*) { return std::malloc(bytes); },
                                           [](void* p, void*) { std::free(p); });
}

}  // namespace moecomm::testing
