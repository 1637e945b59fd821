// The engine's view of GPU memory: allocation, copies, pinned host staging and stream sync, as
// Status-returning calls. Built against the CUDA runtime when the library has CUDA; otherwise every
// call fails with kInvalidUsage saying so, and cudaStream_t-typed values travel as void*.
#pragma once

#include <cstddef>
#include <memory>

#include "moecomm/types.hpp"
#include "src/core/status.hpp"

namespace moecomm::device {

// Fails unless a CUDA device is usable; the message says why (driver, no device, index).
Status requireDevice(int index);

// A cudaError_t (as an int, so that callers need no CUDA header) as a Status: ok for cudaSuccess,
// else kSystemError "<what> failed on the GPU: <error string> (<error name>)".
Status cudaStatus(int error, const char* what);

// Long-lived device memory of `bytes` on GPU `index` that any stream may use (cudaMalloc; the
// returned owner's cudaFree waits for the device): parameters, and buffers peers read.
Status allocate(int index, size_t bytes, std::shared_ptr<std::byte>* out);

// Device memory for a call ordered on `stream`, from the allocator in force
// (include/moecomm/allocator.hpp); the owner gives it back to that allocator on the same stream.
// An application's allocator is called even where no GPU is usable (its tests run anywhere).
Status allocateFor(int index, size_t bytes, void* stream, std::shared_ptr<std::byte>* out);

// Pinned (page-locked) host memory, so that copies to and from the GPU run at full speed and
// asynchronously. From a process-wide cache: cudaMallocHost costs milliseconds, so released
// blocks are kept (by power-of-two size) and reused.
Status acquirePinned(size_t bytes, std::shared_ptr<std::byte>* out);

enum class Direction { kToHost, kToDevice, kDeviceToDevice };
// Ordered on `stream` (a cudaStream_t; null is the default stream).
Status copyAsync(void* dst, const void* src, size_t bytes, Direction direction, void* stream);
Status memsetAsync(void* dst, int byte, size_t bytes, void* stream);
Status synchronize(void* stream);

// Sets the calling thread's current device.
Status setDevice(int index);

}  // namespace moecomm::device
