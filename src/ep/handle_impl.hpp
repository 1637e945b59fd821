// What a dispatch leaves behind for combine and the backward passes: both sides of the layout.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "moecomm/dispatch.hpp"

namespace moecomm {

struct DeviceHandle;  // the GPU-native path's layout (src/ep/device_exchange.cpp)

struct DispatchHandle::Impl {
  const void* group = nullptr;  // the Group::Impl that made it; a handle works only there
  int ranks = 0;
  int topk = 0;
  int64_t hidden = 0;
  // Token-major batch: row r is the r-th received token (no recv_rows, no row_weights).
  bool token_major = false;

  // Source side: what this rank sent.
  int64_t tokens = 0;
  std::vector<std::vector<int32_t>> send_tokens;  // per rank, token ids in send order
  std::vector<int32_t> slot_owner;                // [T * k] rank of the slot's expert, or -1

  // Every rank's token counts, [source * ranks + destination]: all ranks hold the same matrix,
  // so each can compute where any message lands in any receiver's window.
  std::vector<int64_t> count_matrix;

  // Receiving side: what this rank got, in (source rank, send order).
  std::vector<int64_t> recv_tokens;  // per source rank
  std::vector<int64_t> recv_rows;    // [received tokens * k] expert-major row, or -1
  std::vector<float> row_weights;    // [num_rows]
  int64_t num_rows = 0;

  // Set when the dispatch ran GPU-native: the layout lives on the GPU, and combine and the
  // backward passes run there too.
  std::shared_ptr<const DeviceHandle> device;

  // Payload bytes of a round that sends `bytes_per_token` per token towards the experts
  // (forward) or back to the token owners.
  std::vector<size_t> sizes(size_t bytes_per_token, bool towards_experts) const {
    std::vector<size_t> out(count_matrix.size());
    for (int s = 0; s < ranks; ++s) {
      for (int d = 0; d < ranks; ++d) {
        const int64_t c =
            towards_experts ? count_matrix[s * ranks + d] : count_matrix[d * ranks + s];
        out[s * ranks + d] = static_cast<size_t>(c) * bytes_per_token;
      }
    }
    return out;
  }

  int64_t receivedTokens() const {
    int64_t n = 0;
    for (int64_t c : recv_tokens) n += c;
    return n;
  }
};

}  // namespace moecomm
