// The source side of a dispatch: validated routing and which tokens go to which rank.
#pragma once

#include <cstdint>
#include <vector>

#include "moecomm/types.hpp"
#include "src/core/status.hpp"

namespace moecomm {

struct RoutingPlan {
  int64_t tokens = 0;
  int topk = 0;
  std::vector<int32_t> expert;                    // [T * k] global expert id, or -1
  std::vector<int32_t> owner;                     // [T * k] rank holding that expert, or -1
  std::vector<std::vector<int32_t>> rank_tokens;  // per rank: token ids sent there, ascending
};

struct ExpertPlacement {
  int num_experts;
  int local_experts;
  int ranks;
  int topk;
};

// Checks topk_idx ([T, k] i32 or i64, ids in [-1, E), no expert twice in a token) and builds the
// plan.
Status planRouting(const TensorView& topk_idx, const ExpertPlacement& placement, RoutingPlan* out);

}  // namespace moecomm
