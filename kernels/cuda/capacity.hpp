// Capacity on the GPU, the drop half of src/routing/capacity.cpp: assignments claim room in token
// order (by position) or highest weight first (by probability, ties to the earlier slot), and an
// expert keeps its first `capacity` claims. Two stable CUB radix sorts give every assignment its
// place in its expert's queue. Rerouting is sequential by definition (each reroute takes room the
// next may want) and stays on the CPU.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moecomm::cuda {

struct CapacityOutputs {
  int32_t* demand;          // [E] assignments each expert was offered
  int32_t* first_overflow;  // [1] slot (t * k + j) of the first claim past capacity, in claim
                            // order; INT32_MAX when none (the caller sets it beforehand)
};

// idx/weights [slots] (-1 = unused). With `drop`, assignments past capacity become -1 / 0;
// without, nothing changes and only the outputs are filled (OverflowPolicy::kError).
cudaError_t applyCapacity(int32_t* idx, float* weights, int64_t slots, int experts,
                          int64_t capacity, bool by_probability, bool drop,
                          const CapacityOutputs& out, cudaStream_t stream);

}  // namespace moecomm::cuda
