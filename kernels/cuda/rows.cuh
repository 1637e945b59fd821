// Row access for the data-movement kernels: 16-byte vectors when a row and its pointers allow,
// otherwise 4-byte words, otherwise bytes, so any hidden size is right and aligned ones are fast.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "src/core/numeric.hpp"

namespace moecomm::cuda {

// The most blocks a grid-stride kernel launches; its loops stride over the rest. The emulated
// GPU tests build the kernels with a cap of a few blocks, so that every stride loop there takes
// more than one turn and a barrier that guards the next turn is tested (on a GPU that takes
// over a million rows).
#ifndef MOECOMM_CUDA_GRID_CAP
#define MOECOMM_CUDA_GRID_CAP (1 << 20)
#endif
inline int cappedGrid(int64_t blocks) {
  constexpr int64_t cap = MOECOMM_CUDA_GRID_CAP;
  return static_cast<int>(blocks < cap ? (blocks > 0 ? blocks : 1) : cap);
}

// Threads per block of the grid-stride kernels, and their grid: enough blocks for n items.
inline constexpr int kThreads = 256;
inline int blocksFor(int64_t n) {
  return cappedGrid((n + kThreads - 1) / kThreads);
}

// The grid of the one-block-per-row kernels: a block per row.
inline int rowBlocks(int64_t rows) {
  return cappedGrid(rows);
}

// The widest unit (16, 4 or 1 bytes) that divides `bytes` and the given addresses.
inline int copyUnit(int64_t bytes, const void* a, const void* b) {
  const auto bits = static_cast<uint64_t>(bytes) | reinterpret_cast<uintptr_t>(a) |
                    reinterpret_cast<uintptr_t>(b);
  if (bits % 16 == 0) return 16;
  if (bits % 4 == 0) return 4;
  return 1;
}

template <typename Unit>
__device__ inline void copyRowUnits(void* dst, const void* src, int64_t bytes, int thread,
                                    int threads) {
  const auto* s = static_cast<const Unit*>(src);
  auto* d = static_cast<Unit*>(dst);
  const int64_t units = bytes / static_cast<int64_t>(sizeof(Unit));
  for (int64_t i = thread; i < units; i += threads) d[i] = s[i];
}

template <typename Unit>
__device__ inline void zeroRowUnits(void* dst, int64_t bytes, int thread, int threads) {
  auto* d = static_cast<Unit*>(dst);
  const int64_t units = bytes / static_cast<int64_t>(sizeof(Unit));
  for (int64_t i = thread; i < units; i += threads) d[i] = Unit{};
}

// Payload elements as f32: T is float (f32 rows) or uint16_t (bf16 rows).
__device__ inline float toFloat(float v) {
  return v;
}
__device__ inline float toFloat(uint16_t v) {
  return numeric::bf16ToFloat(v);
}
__device__ inline void fromFloat(float v, float* out) {
  *out = v;
}
__device__ inline void fromFloat(float v, uint16_t* out) {
  *out = numeric::floatToBf16(v);
}

// Elements per 16-byte vector for payload type T.
template <typename T>
constexpr int kLanes = 16 / static_cast<int>(sizeof(T));

template <typename T>
struct alignas(16) Vec {
  T v[kLanes<T>];
};

}  // namespace moecomm::cuda
