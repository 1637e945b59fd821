// The tests' ledger allocator over cudaMallocAsync, and a scope that puts an allocator in force
// and restores the default when it ends, also when a check throws.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>

#include "moecomm/allocator.hpp"
#include "tests/common/ledger_allocator.hpp"

namespace moecomm::gputest {

// An application's allocator, as a framework's would be, that follows every block.
inline std::shared_ptr<testing::LedgerAllocator> gpuLedgerAllocator() {
  return std::make_shared<testing::LedgerAllocator>(
      [](size_t bytes, void* stream) {
        void* p = nullptr;
        return cudaMallocAsync(&p, bytes, static_cast<cudaStream_t>(stream)) == cudaSuccess
                   ? p
                   : nullptr;
      },
      [](void* p, void* stream) { cudaFreeAsync(p, static_cast<cudaStream_t>(stream)); });
}

class AllocatorInForce {
 public:
  explicit AllocatorInForce(std::shared_ptr<DeviceAllocator> allocator) {
    setDeviceAllocator(std::move(allocator));
  }
  ~AllocatorInForce() { setDeviceAllocator(nullptr); }
  AllocatorInForce(const AllocatorInForce&) = delete;
  AllocatorInForce& operator=(const AllocatorInForce&) = delete;
};

}  // namespace moecomm::gputest
