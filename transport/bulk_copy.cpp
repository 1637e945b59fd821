#include "transport/bulk_copy.hpp"

#include <algorithm>
#include <cstring>

#include "src/core/env.hpp"
#include "src/core/stream_copy.hpp"

namespace moecomm {

size_t streamCopyThreshold() {
  static const size_t threshold =
      static_cast<size_t>(std::max<int64_t>(0, envInt("MOECOMM_STREAM_COPY_BYTES", 2 << 20)));
  return threshold;
}

void bulkCopy(void* dst, const void* src, size_t bytes) {
  const size_t threshold = streamCopyThreshold();
  if (threshold > 0 && bytes >= threshold) {
    streamCopy(dst, src, bytes);
    streamFence();  // before whatever announces the data
    return;
  }
  std::memcpy(dst, src, bytes);
}

}  // namespace moecomm
