// The source side of dispatch on the GPU: where each token goes (layout) and the send buffer
// (pack). The send buffer holds rank 0's rows, then rank 1's, ..., each rank's in token order:
// the order the CPU engine sends in.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moecomm::cuda {

// Device arrays the layout fills; every element is written.
struct LayoutOutputs {
  int32_t* tokens_per_expert;  // [E] routed slots per global expert
  int32_t* tokens_per_rank;    // [ranks] tokens sent to each rank (once per rank)
  int32_t* rank_offsets;       // [ranks + 1] first send-buffer row of each rank, then the total
  int32_t* send_pos;           // [ranks, T] send-buffer row of (rank, token), -1 when not sent
  uint8_t* is_token_in_rank;   // [T, ranks]
  int32_t* bad_slot;  // [1], or null: lowered to the first slot whose id is outside [-1, E)
  // [1], or null: lowered to the first slot naming an expert its token already names.
  int32_t* repeated_slot = nullptr;
  // Static send regions (sync-free dispatch): rank r's rows start at row r * T of the send
  // buffer instead of right after rank r - 1's, so the host needs no count to find them.
  bool static_regions = false;
};

// topk_idx [T, k] i32 on the device, experts split evenly over ranks (E % ranks == 0).
// CUB does the scan and the histogram; scratch comes from the stream-ordered allocator.
cudaError_t computeLayout(const int32_t* topk_idx, int64_t tokens, int topk, int experts, int ranks,
                          const LayoutOutputs& out, cudaStream_t stream);

// counts[e] = slots of idx (n ids, -1 = unused) naming expert e, for e < experts (CUB histogram).
cudaError_t countExperts(const int32_t* idx, int64_t slots, int experts, int32_t* counts,
                         cudaStream_t stream);

// send[send_pos[r, t]] = x[t] for every sent (rank, token): each token row is read once and
// written once per destination rank. Rows are row_bytes long (any size).
cudaError_t packRows(const void* x, int64_t tokens, int64_t row_bytes, int ranks,
                     const int32_t* send_pos, void* send, cudaStream_t stream);

// The routing that travels with each sent row: for send row s = send_pos[r, t], the k slots of
// token t that rank r owns as local expert ids (-1 elsewhere) with their weights (0 elsewhere),
// and the source token id (send_token may be null).
cudaError_t packRouting(const int32_t* topk_idx, const float* topk_weights, int64_t tokens,
                        int topk, int experts, int ranks, const int32_t* send_pos,
                        int32_t* send_experts, float* send_weights, int32_t* send_token,
                        cudaStream_t stream);

// values[0, n) = value, on the stream (no host memory involved).
cudaError_t fillInt32(int32_t* values, int64_t n, int32_t value, cudaStream_t stream);

// out[i] = in[i] as i64, with INT32_MAX (a "none" of the error slots) as -1.
cudaError_t widenCounts(const int32_t* in, int64_t n, int64_t* out, cudaStream_t stream);

}  // namespace moecomm::cuda
