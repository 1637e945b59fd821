// Work the emulated kernels and CUB put on a stream: host_runtime.cpp runs each stream's work on a
// thread of its own, in order, while the caller goes on, as a GPU would.
#pragma once

#include <cuda_runtime_api.h>

#include <utility>

extern "C" cudaError_t moecommEmulatedEnqueue(cudaStream_t stream, void (*run)(void*), void* work);

namespace emu {

// Runs `work` (moved to the heap) on `stream` after the stream's earlier work.
template <typename Work>
cudaError_t enqueue(cudaStream_t stream, Work work) {
  auto* held = new Work(std::move(work));
  return moecommEmulatedEnqueue(
      stream,
      [](void* p) {
        auto* w = static_cast<Work*>(p);
        (*w)();
        delete w;
      },
      held);
}

}  // namespace emu
