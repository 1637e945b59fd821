#include "kernels/cpu/finite.hpp"

#include "kernels/cpu/vector_clones.hpp"

#include <bit>

namespace moecomm::cpu {

// On the bits, not with float compares: an all-ones exponent is infinity or NaN, and integer
// operations vectorize without any assumption about NaN.
MOECOMM_VECTOR_CLONES
bool allFinite(const float* values, int64_t count) {
  constexpr uint32_t kExponent = 0x7f800000u;
  uint32_t bad = 0;
  for (int64_t i = 0; i < count; ++i) {
    bad |= (std::bit_cast<uint32_t>(values[i]) & kExponent) == kExponent ? 1u : 0u;
  }
  return bad == 0;
}

}  // namespace moecomm::cpu
