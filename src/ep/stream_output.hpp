// When the engine writes a large output with streaming stores (src/core/stream_copy.hpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "src/core/env.hpp"

namespace moecomm {

// Outputs from this size on (MOECOMM_STREAM_OUTPUT_BYTES, default 16 MiB: a rank's share of a
// last-level cache that the host's ranks split; 0 never) are written with streaming stores. They
// would not stay cached until they are read, and skipping the read of every destination line cuts
// a third of a copy's memory traffic.
inline size_t streamOutputBytes() {
  static const auto bytes =
      static_cast<size_t>(std::max<int64_t>(0, envInt("MOECOMM_STREAM_OUTPUT_BYTES", 16 << 20)));
  return bytes;
}

inline bool streamsOutput(size_t bytes) {
  const size_t threshold = streamOutputBytes();
  return threshold > 0 && bytes >= threshold;
}

}  // namespace moecomm
