// The backward of combine on the GPU, with the CPU engine's arithmetic: on the expert side each
// layout row's gradient is its weight times the token's incoming gradient, and each kept slot
// gets <incoming gradient, y[row]> (accumulated in f64); at home each slot's dot product becomes
// the routing weight's gradient.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/combine.hpp"

namespace moecomm::cuda {

// grad_y[row] = row_weights[row] * incoming[row_source[row] / k] for the layout's rows (zeros
// for padding, row_source < 0); rows up to min(*total_rows, max_rows). Payload type `type`.
cudaError_t scaleIntoLayout(const void* incoming, RowType type, int64_t hidden, int topk,
                            const int32_t* row_source, const float* row_weights,
                            const int32_t* total_rows, int64_t max_rows, void* grad_y,
                            cudaStream_t stream);

// dots[i, j] = <incoming[i], y[slot_row[i, j]]> in f64, stored as f32; 0 where slot_row < 0.
cudaError_t slotDots(const void* incoming, const void* y, RowType type, int64_t hidden,
                     int64_t rows_in, int topk, const int32_t* slot_row, float* dots,
                     cudaStream_t stream);

// grad_weights[t, j] = sum over ranks r with send_pos[r, t] >= 0 of back[send_pos[r, t], j]
// (only the rank owning slot j sent a non-zero value), 0 when the token went nowhere.
cudaError_t gatherSlotValues(const float* back, int64_t tokens, int ranks, int topk,
                             const int32_t* send_pos, float* grad_weights, cudaStream_t stream);

}  // namespace moecomm::cuda
