#include "src/ep/expert_layout.hpp"

#include <algorithm>

namespace moecomm {

Status checkDispatchOptions(const DispatchOptions& options) {
  if (options.expert_alignment < 1) {
    return makeError(StatusCode::kInvalidArgument,
                     "expert_alignment must be >= 1 (1 means no padding), got {}",
                     options.expert_alignment);
  }
  if (options.expert_capacity < 0) {
    return makeError(StatusCode::kInvalidArgument,
                     "expert_capacity must be >= 0 (0 = unlimited), got {}",
                     options.expert_capacity);
  }
  if (options.layout == BatchLayout::kTokenMajor &&
      (options.expert_alignment != 1 || options.pad_to_capacity)) {
    return makeError(StatusCode::kInvalidArgument,
                     "expert_alignment {} and pad_to_capacity {} shape an expert-major batch; a "
                     "token-major batch has one row per token: leave them at 1 and false",
                     options.expert_alignment, options.pad_to_capacity);
  }
  if (options.pad_to_capacity && options.expert_capacity == 0) {
    return makeError(StatusCode::kInvalidArgument,
                     "pad_to_capacity needs expert_capacity > 0 (the static size of each expert)");
  }
  if (options.sync_free && !options.pad_to_capacity) {
    return makeError(StatusCode::kInvalidArgument,
                     "sync_free needs pad_to_capacity (and so expert_capacity > 0): only a static "
                     "batch shape can be sized without reading the counts back");
  }
  return Status::ok();
}

int64_t layoutExperts(const DispatchOptions& options, const std::vector<int64_t>& demand,
                      ExpertBatch* batch) {
  const int64_t alignment = options.expert_alignment;
  const int64_t capacity = options.expert_capacity;
  batch->expert_demand = demand;
  batch->expert_counts.resize(demand.size());
  batch->expert_offsets.assign(demand.size() + 1, 0);
  batch->refused = 0;
  for (size_t e = 0; e < demand.size(); ++e) {
    const int64_t count = capacity > 0 ? std::min(demand[e], capacity) : demand[e];
    const int64_t rows = options.pad_to_capacity ? capacity : count;
    batch->expert_counts[e] = count;
    batch->refused += demand[e] - count;
    batch->expert_offsets[e + 1] =
        batch->expert_offsets[e] + (rows + alignment - 1) / alignment * alignment;
  }
  return batch->expert_offsets.back();
}

}  // namespace moecomm
