// The byte copy behind every same-host delivery (puts into mapped windows, matched in-process
// messages). Large copies bypass the caches with streaming stores: a copy that does not fit in
// the last-level cache otherwise reads every destination line before writing it, a third more
// memory traffic, and evicts what the receiver was working on.
#pragma once

#include <cstddef>

namespace moecomm {

// memcpy below the streaming threshold, streaming stores at and above it. The threshold is
// MOECOMM_STREAM_COPY_BYTES (default 2 MiB; 0 turns streaming off), read once.
void bulkCopy(void* dst, const void* src, size_t bytes);

// The threshold in effect, for logs and benchmarks.
size_t streamCopyThreshold();

}  // namespace moecomm
