// The allocator in force for GPU tensors made for a call, and the two built-in ones.
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "moecomm/allocator.hpp"
#include "src/core/env.hpp"
#include "src/core/log.hpp"

#if defined(MOECOMM_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace moecomm {

DeviceAllocator::~DeviceAllocator() = default;

namespace {

#if defined(MOECOMM_HAVE_CUDA)

class CudaMallocAllocator final : public DeviceAllocator {
 public:
  void* allocate(size_t bytes, int, void*) override {
    void* p = nullptr;
    return cudaMalloc(&p, bytes) == cudaSuccess ? p : nullptr;
  }
  void release(void* ptr, size_t, int, void*) noexcept override { cudaFree(ptr); }
  const char* name() const noexcept override { return "cudaMalloc"; }
};

// One pool per GPU, created on first use, that keeps released memory for reuse (release threshold
// at its maximum) instead of handing it back to the driver at each synchronization. Its own pool,
// not the device's default one, so that other users of cudaMallocAsync keep their settings.
class StreamPoolAllocator final : public DeviceAllocator {
 public:
  void* allocate(size_t bytes, int device, void* stream) override {
    cudaMemPool_t pool = poolFor(device);
    if (pool == nullptr) return nullptr;
    void* p = nullptr;
    const cudaError_t status =
        cudaMallocFromPoolAsync(&p, bytes, pool, static_cast<cudaStream_t>(stream));
    return status == cudaSuccess ? p : nullptr;
  }
  void release(void* ptr, size_t, int, void* stream) noexcept override {
    cudaFreeAsync(ptr, static_cast<cudaStream_t>(stream));
  }
  const char* name() const noexcept override { return "stream-ordered pool"; }

 private:
  cudaMemPool_t poolFor(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = pools_.find(device);
    if (found != pools_.end()) return found->second;
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    cudaMemPool_t pool = nullptr;
    if (cudaMemPoolCreate(&pool, &props) != cudaSuccess) return nullptr;
    uint64_t keep_everything = UINT64_MAX;
    if (cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_everything) !=
        cudaSuccess) {
      cudaMemPoolDestroy(pool);
      return nullptr;
    }
    pools_[device] = pool;  // never destroyed: tensors may be released during static destruction
    return pool;
  }

  std::mutex mutex_;
  std::map<int, cudaMemPool_t> pools_;
};

#else

// Built without CUDA: nothing to allocate; device::allocateFor says why.
class NoCudaAllocator : public DeviceAllocator {
 public:
  explicit NoCudaAllocator(const char* name) : name_(name) {}
  void* allocate(size_t, int, void*) override { return nullptr; }
  void release(void*, size_t, int, void*) noexcept override {}
  const char* name() const noexcept override { return name_; }

 private:
  const char* name_;
};

struct CudaMallocAllocator final : NoCudaAllocator {
  CudaMallocAllocator() : NoCudaAllocator("cudaMalloc") {}
};
struct StreamPoolAllocator final : NoCudaAllocator {
  StreamPoolAllocator() : NoCudaAllocator("stream-ordered pool") {}
};

#endif

std::shared_ptr<DeviceAllocator> fromEnv() {
  const auto choice = envString("MOECOMM_CUDA_ALLOCATOR");
  if (choice && *choice == "stream") return streamOrderedDeviceAllocator();
  if (choice && !choice->empty() && *choice != "sync") {
    MOECOMM_LOG(LogLevel::kWarn, "MOECOMM_CUDA_ALLOCATOR='{}' is not sync or stream; using sync",
                *choice);
  }
  return synchronousDeviceAllocator();
}

struct Registry {
  std::mutex mutex;
  std::shared_ptr<DeviceAllocator> current;
};

Registry& registry() {
  static auto* r = new Registry;  // outlives static destructors that may release tensors
  return *r;
}

}  // namespace

// Never destroyed: tensors may be released during static destruction.
std::shared_ptr<DeviceAllocator> synchronousDeviceAllocator() {
  static const auto* allocator = new std::shared_ptr<DeviceAllocator>(new CudaMallocAllocator);
  return *allocator;
}

std::shared_ptr<DeviceAllocator> streamOrderedDeviceAllocator() {
  static const auto* allocator = new std::shared_ptr<DeviceAllocator>(new StreamPoolAllocator);
  return *allocator;
}

void setDeviceAllocator(std::shared_ptr<DeviceAllocator> allocator) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.current = allocator != nullptr ? std::move(allocator) : fromEnv();
}

std::shared_ptr<DeviceAllocator> currentDeviceAllocator() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (r.current == nullptr) r.current = fromEnv();
  return r.current;
}

}  // namespace moecomm
