// A whole-array finiteness check, for the router's input validation.
#pragma once

#include <cstdint>

namespace moecomm::cpu {

// True when no value is infinite or NaN. One branch-free pass; finding the culprit is the caller's
// slow path, taken only on failure.
bool allFinite(const float* values, int64_t count);

}  // namespace moecomm::cpu
