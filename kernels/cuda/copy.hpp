// Copies whose row count is known only on the GPU. A sync-free dispatch sends each peer a static
// region sized for every token; the count of rows really in it is an i32 in device memory, so
// these copies read it there and move only those rows, without a wait for the host.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moecomm::cuda {

// One buffer of a counted copy: rows of row_bytes (any size) from src to dst.
struct CountedRows {
  void* dst = nullptr;
  const void* src = nullptr;
  int64_t row_bytes = 0;
};

inline constexpr int kMaxCountedParts = 4;

// For each of the `count` parts (at most kMaxCountedParts), rows [0, n) of dst = those of src,
// with n = *rows clamped to [0, max_rows]; rows at n and past it are not touched. One launch for
// all parts, ordered on the stream; rows may point to memory another kernel writes earlier on
// the stream.
cudaError_t copyCountedRows(const CountedRows* parts, int count, const int32_t* rows,
                            int64_t max_rows, cudaStream_t stream);

}  // namespace moecomm::cuda
