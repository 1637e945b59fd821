// The receiving side of dispatch on the GPU: received rows (ordered by source rank, then source
// token, as the send buffers are) into the expert-major layout, with alignment padding and an
// optional per-expert capacity, as the CPU engine lays them out (src/ep/dispatch.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moecomm::cuda {

struct UnpackOptions {
  int local_experts = 1;
  int alignment = 1;             // each expert's rows padded to a multiple of this
  int64_t capacity = 0;          // most rows one expert accepts (0 = unlimited); later rows refused
  bool pad_to_capacity = false;  // every expert's segment is capacity rows (rounded up)
  int64_t max_rows = 0;          // rows the output buffers hold
};

// Device arrays the plan fills; every element is written.
struct UnpackPlan {
  int32_t* expert_demand;   // [L] rows offered to each local expert
  int32_t* expert_counts;   // [L] rows kept (demand capped by capacity)
  int32_t* expert_offsets;  // [L + 1] first row of each expert; [L] = rows in the layout
  int32_t* slot_row;        // [rows_in, k] output row of each received slot, -1 if none/refused
  int32_t* row_source;      // [max_rows] received slot (row * k + j) of each output row, -1 = pad
  int32_t* refused;         // [1] rows refused by capacity
  int32_t* overflow;        // [1] 0, or the rows the layout needs when max_rows is too small
};

// recv_experts [rows_in, k]: local expert id of each received slot, -1 where the slot is for
// another rank. The expert-major order is kept stable by a CUB radix sort on the expert id.
cudaError_t planUnpack(const int32_t* recv_experts, int64_t rows_in, int topk,
                       const UnpackOptions& options, const UnpackPlan& plan, cudaStream_t stream);

// out[row] = recv[row_source[row] / k] and row_weights[row] = recv_weights[row_source[row]] for
// the layout's rows; padding rows get zeros and weight 0. Rows past the layout (up to max_rows)
// are left as they are. Rows are row_bytes long (any size). With row_weights null (a second
// payload laid out by the same plan) only the rows are written.
cudaError_t unpackRows(const void* recv, const float* recv_weights, int topk, int64_t row_bytes,
                       const UnpackPlan& plan, int local_experts, int64_t max_rows, void* out,
                       float* row_weights, cudaStream_t stream);

// Token-major routing from a plan with alignment 1: each received slot's local expert and weight
// where the plan kept it (slot_row >= 0), -1 and 0 where it did not (another rank's expert, an
// unused slot, or a refusal under capacity). slots = rows_in * topk.
cudaError_t keptRouting(const int32_t* recv_experts, const float* recv_weights,
                        const int32_t* slot_row, int64_t slots, int32_t* topk_idx,
                        float* topk_weights, cudaStream_t stream);

}  // namespace moecomm::cuda
