// The counts of a sync-free dispatch (DispatchOptions::sync_free): where they live until the host
// asks for them (ExpertBatch::device_counts) and how they come back (collectCounts).
#pragma once

#include "moecomm/dispatch.hpp"
#include "src/core/status.hpp"

namespace moecomm {

// The index of each entry of ExpertBatch::device_counts (layout in dispatch.hpp).
struct CountsLayout {
  int64_t local_experts = 0;
  int64_t ranks = 0;
  int64_t demand(int64_t e) const { return e; }
  int64_t kept(int64_t e) const { return local_experts + e; }
  int64_t fromRank(int64_t r) const { return 2 * local_experts + r; }
  int64_t refused() const { return 2 * local_experts + ranks; }
  int64_t badSlot() const { return refused() + 1; }
  int64_t repeatedSlot() const { return refused() + 2; }
  int64_t size() const { return dispatchCountsSize(local_experts, ranks); }
};

// A host-path batch of a sync-free dispatch takes the same shape as a GPU-native one: its host
// counts move into device_counts (a host tensor; the staged path copies it to the GPU with the
// rest), and the host vectors are emptied until collectCounts.
Status deferCounts(ExpertBatch& batch);

// Empties the host counts of a sync-free batch (refused -1) until collectCounts fills them.
void clearHostCounts(ExpertBatch& batch);

}  // namespace moecomm
