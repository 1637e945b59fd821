// Stream-ordered scratch memory for one operation (CUB's temporary storage, small plans): taken
// with cudaMallocAsync and given back with cudaFreeAsync on the same stream, so no call waits for
// the device.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <vector>

namespace moecomm::cuda {

class StreamScratch {
 public:
  explicit StreamScratch(cudaStream_t stream) : stream_(stream) {}
  ~StreamScratch() {
    for (void* p : blocks_) cudaFreeAsync(p, stream_);
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;

  template <typename T>
  cudaError_t take(size_t count, T** out) {
    void* p = nullptr;
    const cudaError_t status = cudaMallocAsync(&p, count * sizeof(T) + 16, stream_);
    if (status != cudaSuccess) return status;
    blocks_.push_back(p);
    *out = static_cast<T*>(p);
    return cudaSuccess;
  }

 private:
  cudaStream_t stream_;
  std::vector<void*> blocks_;
};

}  // namespace moecomm::cuda

#define MOECOMM_CUDA_TRY(call)                                  \
  do {                                                          \
    const cudaError_t moecomm_status_ = (call);                 \
    if (moecomm_status_ != cudaSuccess) return moecomm_status_; \
  } while (0)
