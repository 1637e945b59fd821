// Values that make bf16 rounding visible and leave everything else exact: k/8 + 2^-12 (away from
// zero) with k in +-[1, 15]. bf16 keeps k/8 exactly (the 2^-12 is under half its step there) and
// f32 keeps both, so products of rounded values are exact multiples of 1/64 and short sums of
// them are exact in f32 in any order. No GoogleTest here: tests/gpu uses it too.
#pragma once

#include <cstddef>
#include <random>
#include <vector>

namespace moecomm::testing {

inline std::vector<float> gridValues(size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> pick(1, 15);
  std::bernoulli_distribution negative(0.5);
  std::vector<float> v(n);
  for (float& x : v) {
    const float base = static_cast<float>(pick(rng)) / 8.0f;
    x = (negative(rng) ? -1.0f : 1.0f) * (base + 0x1p-12f);
  }
  return v;
}

}  // namespace moecomm::testing
