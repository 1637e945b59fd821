// The receiving side's expert layout, shared by the CPU engine and the GPU-native path: from the
// rows offered to each local expert, the rows kept under expert_capacity, the refusals, and the
// offsets with alignment padding (or every expert padded to capacity for static shapes).
#pragma once

#include <cstdint>
#include <vector>

#include "moecomm/dispatch.hpp"
#include "src/core/status.hpp"

namespace moecomm {

// alignment >= 1, capacity >= 0, pad_to_capacity only with a capacity.
Status checkDispatchOptions(const DispatchOptions& options);

// Fills batch->expert_demand, expert_counts, refused and expert_offsets; returns the layout's rows.
int64_t layoutExperts(const DispatchOptions& options, const std::vector<int64_t>& demand,
                      ExpertBatch* batch);

}  // namespace moecomm
