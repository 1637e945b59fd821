#include "kernels/cpu/rows.hpp"

#include "kernels/cpu/vector_clones.hpp"
#include "src/core/numeric.hpp"

namespace moecomm::cpu {

MOECOMM_VECTOR_CLONES
void accumulateRow(float* acc, const void* row, bool is_bf16, float weight, int64_t n) {
  if (is_bf16) {
    const auto* src = static_cast<const uint16_t*>(row);
    for (int64_t i = 0; i < n; ++i) acc[i] += weight * numeric::bf16ToFloat(src[i]);
  } else {
    const auto* src = static_cast<const float*>(row);
    for (int64_t i = 0; i < n; ++i) acc[i] += weight * src[i];
  }
}

MOECOMM_VECTOR_CLONES
void storeRow(void* dst, bool is_bf16, const float* acc, int64_t n) {
  if (is_bf16) {
    auto* out = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) out[i] = numeric::floatToBf16(acc[i]);
  } else {
    auto* out = static_cast<float*>(dst);
    for (int64_t i = 0; i < n; ++i) out[i] = acc[i];
  }
}

MOECOMM_VECTOR_CLONES
void scaleRow(void* dst, const void* src, bool is_bf16, float weight, int64_t n) {
  if (is_bf16) {
    const auto* in = static_cast<const uint16_t*>(src);
    auto* out = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i)
      out[i] = numeric::floatToBf16(weight * numeric::bf16ToFloat(in[i]));
  } else {
    const auto* in = static_cast<const float*>(src);
    auto* out = static_cast<float*>(dst);
    for (int64_t i = 0; i < n; ++i) out[i] = weight * in[i];
  }
}

float dotRows(const void* a, const void* b, bool is_bf16, int64_t n) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    sum += static_cast<double>(numeric::loadAsFloat(a, i, is_bf16)) *
           static_cast<double>(numeric::loadAsFloat(b, i, is_bf16));
  }
  return static_cast<float>(sum);
}

}  // namespace moecomm::cpu
