#include "src/core/device.hpp"

#include <exception>
#include <string>

#include "moecomm/allocator.hpp"

#if defined(MOECOMM_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include <map>
#include <mutex>
#include <vector>
#endif

namespace moecomm::device {

#if defined(MOECOMM_HAVE_CUDA)

namespace {

cudaStream_t asStream(void* stream) {
  return static_cast<cudaStream_t>(stream);
}

}  // namespace

Status cudaStatus(int error, const char* what) {
  if (error == cudaSuccess) return Status::ok();
  const auto status = static_cast<cudaError_t>(error);
  return makeError(StatusCode::kSystemError, "{} failed on the GPU: {} ({})", what,
                   cudaGetErrorString(status), cudaGetErrorName(status));
}

Status requireDevice(int index) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    return makeError(StatusCode::kInvalidUsage,
                     "a CUDA tensor was passed, but no GPU is usable here: {} (check the driver "
                     "and CUDA_VISIBLE_DEVICES)",
                     cudaGetErrorString(status));
  }
  if (index < 0 || index >= count) {
    return makeError(StatusCode::kInvalidArgument,
                     "CUDA device {} does not exist: this process sees {} GPU(s)", index, count);
  }
  return Status::ok();
}

namespace {

// Released pinned blocks by capacity; never given back to the driver (the process's working set).
struct PinnedCache {
  std::mutex mutex;
  std::map<size_t, std::vector<std::byte*>> free;
};

PinnedCache& pinnedCache() {
  static auto* cache = new PinnedCache;  // outlives static destructors that may release blocks
  return *cache;
}

}  // namespace

Status acquirePinned(size_t bytes, std::shared_ptr<std::byte>* out) {
  size_t capacity = 4096;
  while (capacity < bytes) capacity *= 2;
  PinnedCache& cache = pinnedCache();
  std::byte* block = nullptr;
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    auto& list = cache.free[capacity];
    if (!list.empty()) {
      block = list.back();
      list.pop_back();
    }
  }
  if (block == nullptr) {
    void* p = nullptr;
    const cudaError_t status = cudaMallocHost(&p, capacity);
    if (status != cudaSuccess) {
      return makeError(StatusCode::kSystemError, "cudaMallocHost of {} bytes failed: {}", capacity,
                       cudaGetErrorString(status));
    }
    block = static_cast<std::byte*>(p);
  }
  *out = std::shared_ptr<std::byte>(block, [capacity](std::byte* q) {
    PinnedCache& c = pinnedCache();
    std::lock_guard<std::mutex> lock(c.mutex);
    c.free[capacity].push_back(q);
  });
  return Status::ok();
}

Status copyAsync(void* dst, const void* src, size_t bytes, Direction direction, void* stream) {
  if (bytes == 0) return Status::ok();
  const cudaMemcpyKind kind = direction == Direction::kToHost     ? cudaMemcpyDeviceToHost
                              : direction == Direction::kToDevice ? cudaMemcpyHostToDevice
                                                                  : cudaMemcpyDeviceToDevice;
  const cudaError_t status = cudaMemcpyAsync(dst, src, bytes, kind, asStream(stream));
  return cudaStatus(status, "cudaMemcpyAsync");
}

Status memsetAsync(void* dst, int byte, size_t bytes, void* stream) {
  if (bytes == 0) return Status::ok();
  const cudaError_t status = cudaMemsetAsync(dst, byte, bytes, asStream(stream));
  return cudaStatus(status, "cudaMemsetAsync");
}

Status synchronize(void* stream) {
  const cudaError_t status = cudaStreamSynchronize(asStream(stream));
  return cudaStatus(status, "cudaStreamSynchronize");
}

Status setDevice(int index) {
  const cudaError_t status = cudaSetDevice(index);
  return cudaStatus(status, "cudaSetDevice");
}

#else

namespace {

Status notBuilt() {
  return Status(StatusCode::kInvalidUsage,
                "a CUDA tensor was passed, but this moecomm was built without CUDA: rebuild with "
                "nvcc on PATH (or -DMOECOMM_WITH_CUDA=ON)");
}

}  // namespace

Status requireDevice(int) {
  return notBuilt();
}
Status cudaStatus(int error, const char* what) {
  if (error == 0) return Status::ok();
  return makeError(StatusCode::kSystemError, "{} failed on the GPU: CUDA error {}", what, error);
}
Status acquirePinned(size_t, std::shared_ptr<std::byte>*) {
  return notBuilt();
}
Status copyAsync(void*, const void*, size_t, Direction, void*) {
  return notBuilt();
}
Status memsetAsync(void*, int, size_t, void*) {
  return notBuilt();
}
Status synchronize(void*) {
  return notBuilt();
}
Status setDevice(int) {
  return notBuilt();
}

#endif

namespace {

// for_call: memory of a call, whose allocator the caller may choose (the message says how).
Status allocateWith(std::shared_ptr<DeviceAllocator> allocator, bool for_call, int index,
                    size_t bytes, void* stream, std::shared_ptr<std::byte>* out) {
  // The built-in allocators need the GPU. An application's is called as it is, with the GPU made
  // current when there is one (PyTorch's allocates on the current device).
  const Status usable = requireDevice(index);
  const bool built_in =
      allocator == synchronousDeviceAllocator() || allocator == streamOrderedDeviceAllocator();
  if (built_in) MOECOMM_RETURN_IF_ERROR(usable);
  if (usable.isOk()) MOECOMM_RETURN_IF_ERROR(setDevice(index));
  const size_t asked = bytes > 0 ? bytes : 1;
  void* p = nullptr;
  std::string why;
  try {  // an application's allocator may throw (PyTorch's does when out of memory)
    p = allocator->allocate(asked, index, stream);
  } catch (const std::exception& e) {
    why = e.what();
  } catch (...) {
    why = "an exception that is not a std::exception";
  }
  if (p == nullptr) {
#if defined(MOECOMM_HAVE_CUDA)
    if (why.empty() && built_in) why = cudaGetErrorString(cudaGetLastError());
#endif
    if (why.empty()) why = "it returned null";
    return makeError(StatusCode::kSystemError,
                     "allocating {} bytes on GPU {} with the '{}' allocator failed: {} (free GPU "
                     "memory{})",
                     asked, index, allocator->name(), why,
                     for_call ? ", or choose another allocator: MOECOMM_CUDA_ALLOCATOR, "
                                "setDeviceAllocator"
                              : "");
  }
  *out = std::shared_ptr<std::byte>(static_cast<std::byte*>(p),
                                    [allocator, asked, index, stream](std::byte* q) {
                                      allocator->release(q, asked, index, stream);
                                    });
  return Status::ok();
}

}  // namespace

Status allocate(int index, size_t bytes, std::shared_ptr<std::byte>* out) {
  return allocateWith(synchronousDeviceAllocator(), false, index, bytes, nullptr, out);
}

Status allocateFor(int index, size_t bytes, void* stream, std::shared_ptr<std::byte>* out) {
  return allocateWith(currentDeviceAllocator(), true, index, bytes, stream, out);
}

}  // namespace moecomm::device
