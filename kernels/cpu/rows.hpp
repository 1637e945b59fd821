// Row kernels of the exchange engine: accumulate weighted rows in f32, store f32 rows in a payload
// dtype, and dot products. Payload rows are f32 or bf16.
#pragma once

#include <cstdint>

namespace moecomm::cpu {

// acc[i] += weight * row[i] for i < n; row is bf16 when is_bf16, else f32.
void accumulateRow(float* acc, const void* row, bool is_bf16, float weight, int64_t n);
// dst[i] = acc[i] converted to the payload type (bf16 rounds to nearest even).
void storeRow(void* dst, bool is_bf16, const float* acc, int64_t n);
// dst[i] = weight * src[i] in the payload type.
void scaleRow(void* dst, const void* src, bool is_bf16, float weight, int64_t n);
// sum_i a[i] * b[i] accumulated in f64 and returned as f32.
float dotRows(const void* a, const void* b, bool is_bf16, int64_t n);

}  // namespace moecomm::cpu
