// Combine on the GPU, in two reductions with f32 accumulation: on the expert side each received
// row sums its slots' weighted expert outputs (one row goes home per source token, as on the CPU),
// and on the home side each token sums what came back from every rank it visited.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moecomm::cuda {

// Payloads are f32 or bf16.
enum class RowType : int { kF32 = 0, kBF16 = 1 };

// partial[i] = sum over j with slot_row[i, j] >= 0 of row_weights[slot_row] * y[slot_row], for
// the rows_in received rows (zeros when none is kept). y: [layout rows, hidden]. Null
// row_weights means 1 (the backward of dispatch). Products and sums round like the CPU's.
cudaError_t combineExpertSide(const void* y, RowType type, int64_t hidden, int64_t rows_in,
                              int topk, const int32_t* slot_row, const float* row_weights,
                              void* partial, cudaStream_t stream);

// out[t] = sum over ranks r with send_pos[r, t] >= 0 of back[send_pos[r, t]] (zeros when none).
// back holds the partial sums in send-buffer order; out is [tokens, hidden].
cudaError_t combineReduce(const void* back, RowType type, int64_t hidden, int64_t tokens, int ranks,
                          const int32_t* send_pos, void* out, cudaStream_t stream);

}  // namespace moecomm::cuda
