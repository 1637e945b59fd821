// Capacity control on a routing: drop policies and rerouting to the next-best expert.
#pragma once

#include <cstdint>
#include <vector>

#include "moecomm/router.hpp"
#include "src/core/status.hpp"

namespace moecomm {

int64_t expertCapacity(const RouterOptions& options, int64_t tokens, int experts);

// OverflowPolicy::kError's error, naming the expert, its demand and the capacity.
Status overCapacity(const RouterOptions& options, int expert, int64_t demand, int64_t capacity,
                    int64_t tokens);

// max / mean of the kept load (1 for no load).
double imbalanceOf(const std::vector<int64_t>& load);

// idx/weights [T*k] are updated in place; candidates [T*c] are the token's next-best experts.
// Fills stats (demand, kept, dropped, rerouted, imbalance).
Status applyCapacity(const RouterOptions& options, int64_t tokens, int experts, int64_t capacity,
                     int32_t* idx, float* weights, const int32_t* candidate_idx,
                     const float* candidate_weights, LoadStats* stats);

}  // namespace moecomm
