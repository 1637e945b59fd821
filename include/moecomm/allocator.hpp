// Where the library's GPU tensors get their memory. A training framework plugs in its own caching
// allocator (PyTorch's raw_alloc_with_stream / raw_delete), so that moecomm's outputs and
// temporaries count against the framework's memory and reuse its pool. Two are built in:
//   synchronousDeviceAllocator()   cudaMalloc / cudaFree (the default). Safe on every stream:
//                                  cudaFree waits for the whole device, which is also its cost.
//   streamOrderedDeviceAllocator() cudaMallocFromPoolAsync / cudaFreeAsync on one pool per GPU that
//                                  keeps its memory: no call waits, and the contract is PyTorch
//                                  caching allocator's (below).
// MOECOMM_CUDA_ALLOCATOR=sync|stream picks the built-in one in force until setDeviceAllocator.
//
// The allocator in force serves the GPU tensors made for a call: outputs, handles and temporaries
// of every operation, and Tensor::empty/zeros given an ExecContext. Tensors made without one
// (parameters, Tensor::empty(shape, dtype, device)) live long and are used on any stream, so they
// always come from cudaMalloc.
//
// The stream contract, for stream-ordered allocators: memory allocated for a call is ordered on
// that call's stream (ExecContext::stream) and goes back to that stream when the last tensor that
// owns it is destroyed. Work on another stream that uses such a tensor must be ordered before the
// stream's later work (an event) before the last owner goes, and the stream must outlive the
// tensor, as with PyTorch's caching allocator.
#pragma once

#include <cstddef>
#include <memory>

#include "moecomm/export.hpp"

namespace moecomm {

class MOECOMM_API DeviceAllocator {
 public:
  virtual ~DeviceAllocator();
  // `bytes` (> 0) on GPU `device`, ordered on `stream` (a cudaStream_t; null is stream 0). When
  // the library has CUDA, the calling thread's current device is `device`. Returns null when it
  // cannot; the library then raises kSystemError naming the size, the GPU and this allocator.
  virtual void* allocate(size_t bytes, int device, void* stream) = 0;
  // Takes back what allocate returned, with the same bytes, device and stream; called once, from
  // whichever thread drops the last owner (its current device may be another GPU).
  virtual void release(void* ptr, size_t bytes, int device, void* stream) noexcept = 0;
  // For messages: "cudaMalloc", "stream-ordered pool", "torch".
  virtual const char* name() const noexcept = 0;
};

// The allocator for GPU tensors allocated from now on (tensors keep the allocator that made
// them). Null restores the default, MOECOMM_CUDA_ALLOCATOR's. Thread-safe.
MOECOMM_API void setDeviceAllocator(std::shared_ptr<DeviceAllocator> allocator);
MOECOMM_API std::shared_ptr<DeviceAllocator> currentDeviceAllocator();

MOECOMM_API std::shared_ptr<DeviceAllocator> synchronousDeviceAllocator();
MOECOMM_API std::shared_ptr<DeviceAllocator> streamOrderedDeviceAllocator();

}  // namespace moecomm
