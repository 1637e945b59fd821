// Capacity on the GPU, as src/routing/capacity.cpp: assignments claim room in token order (by
// position) or highest weight first (by probability, ties to the earlier slot), and an expert
// keeps its first `capacity` claims. Two stable CUB radix sorts give every assignment its place in
// its expert's queue. Rerouting is sequential by definition (each reroute takes room the next may
// want): one warp walks the overflowing claims in claim order, a ballot at a time.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moecomm::cuda {

struct CapacityOutputs {
  int32_t* demand;          // [E] assignments each expert was offered
  int32_t* first_overflow;  // [1] slot (t * k + j) of the first claim past capacity, in claim
                            // order; INT32_MAX when none (the caller sets it beforehand)
};

// OverflowPolicy::kReroute: an assignment past capacity moves to its token's first candidate
// (the gate's next-best experts) that still has room and that the token does not use yet, else it
// is dropped.
struct Reroute {
  const int32_t* candidate_idx = nullptr;    // [tokens, candidates] (-1 = none)
  const float* candidate_weights = nullptr;  // [tokens, candidates]
  int candidates = 0;
  int topk = 0;
  int32_t* load = nullptr;      // [E] out: assignments each expert keeps after rerouting
  int32_t* counters = nullptr;  // [2] out: slots rerouted, slots dropped
};

// idx/weights [slots] (-1 = unused). With `drop`, assignments past capacity become -1 / 0, or
// are rerouted when `reroute` is not null; without, nothing changes and only the outputs are
// filled (OverflowPolicy::kError).
cudaError_t applyCapacity(int32_t* idx, float* weights, int64_t slots, int experts,
                          int64_t capacity, bool by_probability, bool drop,
                          const CapacityOutputs& out, const Reroute* reroute, cudaStream_t stream);

}  // namespace moecomm::cuda
