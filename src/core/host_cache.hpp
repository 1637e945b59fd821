// A caching allocator for large host buffers (tensors), as PyTorch keeps one for DeepEP's
// outputs: freshly mapped memory costs a page fault per 4 KiB on first touch, which made a
// dispatch's unpack 8x slower than the copy itself. Freed blocks of 64 KiB and more are kept (up
// to MOECOMM_HOST_CACHE_MB, default 2048) and handed out again for requests they fit.
#pragma once

#include <cstddef>

namespace moecomm {

// 64-byte aligned; `capacity` receives the block's real size (pass it back to hostFree).
void* hostAlloc(size_t bytes, size_t* capacity);
void hostFree(void* block, size_t capacity);
// Returns every cached block to the system (tests, or callers short of memory).
void hostCacheRelease();

}  // namespace moecomm
