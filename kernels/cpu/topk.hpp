// Top-n selection of a row of floats: the indices of the n largest values, descending, ties to the
// lower index. -inf marks an excluded entry, never chosen, so fewer than n may come back.
#pragma once

#include <cstdint>
#include <vector>

namespace moecomm::cpu {

// Reused buffers: one per gate call, so the per-token selections allocate nothing.
struct TopScratch {
  std::vector<int32_t> index;
  std::vector<int32_t> ordered, ranks;
  std::vector<float> picked, held, maxima, order, compact;
};

// Returns how many indices were written to out[0, n).
int selectTop(const float* values, int count, int n, int* out, TopScratch& scratch);

// The same, given a floor the caller knows: a value with at least n non-excluded values at or
// above it (so at most the n-th largest). It spares finding one; a floor that is not tight only
// costs time, and -inf means none is known.
int selectTopAbove(const float* values, int count, int n, float floor, int* out,
                   TopScratch& scratch);

// The same over some groups of a row only: groups [num_groups], ascending ids of groups of
// per_group values each, and a floor as for selectTopAbove among them. Indices are positions in
// the whole row.
int selectTopInGroups(const float* values, int per_group, const int* groups, int num_groups, int n,
                      float floor, int* out, TopScratch& scratch);

}  // namespace moecomm::cpu
