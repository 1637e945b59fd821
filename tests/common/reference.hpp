// An independent dense reference for dispatch/combine: loops over tokens and experts of every rank
// in f64, knowing nothing of layouts, messages or handles.
#pragma once

#include <moecomm/moecomm.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace moecomm::testing {

// A [rows, cols] f32 tensor of normal values with standard deviation `stddev`.
inline Tensor randomNormal(int64_t rows, int64_t cols, unsigned seed, float stddev) {
  Tensor t = Tensor::empty({rows, cols}, DType::kF32);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  for (int64_t i = 0; i < t.numel(); ++i) t.as<float>()[i] = dist(rng);
  return t;
}

// One rank's inputs, as plain vectors. x holds the values exactly as the payload dtype carries
// them.
struct RankInputs {
  int64_t tokens = 0;
  std::vector<float> x;        // [T, H] (already rounded to bf16 when the dtype is bf16)
  std::vector<int32_t> idx;    // [T, k]
  std::vector<float> weights;  // [T, k]
};

inline float roundTo(DType dtype, float v) {
  return dtype == DType::kBF16 ? bf16ToFloat(floatToBf16(v)) : v;
}

// A payload tensor holding `values` in `dtype` (f32 or bf16).
inline Tensor makePayload(const std::vector<float>& values, int64_t rows, int64_t cols,
                          DType dtype) {
  Tensor t = Tensor::empty({rows, cols}, dtype);
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kBF16) {
      t.as<uint16_t>()[i] = floatToBf16(values[i]);
    } else {
      t.as<float>()[i] = values[i];
    }
  }
  return t;
}

inline float payloadAt(const TensorView& t, int64_t i) {
  return t.dtype == DType::kBF16 ? bf16ToFloat(t.as<uint16_t>()[i]) : t.as<float>()[i];
}

// Random routing: each token picks `used` distinct experts (the rest of its k slots are -1).
inline RankInputs randomInputs(std::mt19937& rng, int64_t tokens, int hidden, int experts, int k,
                               DType dtype) {
  RankInputs in;
  in.tokens = tokens;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.05f, 1.0f);
  in.x.resize(static_cast<size_t>(tokens * hidden));
  for (float& v : in.x) v = roundTo(dtype, normal(rng));
  in.idx.assign(static_cast<size_t>(tokens * k), -1);
  in.weights.assign(static_cast<size_t>(tokens * k), 0.0f);
  std::vector<int> perm(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int j = 0; j < k; ++j) {
      in.idx[t * k + j] = perm[j];
      in.weights[t * k + j] = uniform(rng);
    }
  }
  return in;
}

// The per-expert transform the tests apply: y = x * scale(e) + shift(e) (expert e global).
inline double expertScale(int e) {
  return 0.5 + 0.25 * (e % 7);
}
inline double expertShift(int e) {
  return 0.01 * (e % 5) - 0.02;
}

}  // namespace moecomm::testing
