#include "src/routing/capacity.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace moecomm {

int64_t expertCapacity(const RouterOptions& options, int64_t tokens, int experts) {
  if (options.capacity_factor <= 0.0) return 0;
  const double raw = options.capacity_factor * static_cast<double>(tokens) * options.topk / experts;
  return std::max<int64_t>(options.min_capacity, static_cast<int64_t>(std::ceil(raw)));
}

Status applyCapacity(const RouterOptions& options, int64_t tokens, int experts, int64_t capacity,
                     int32_t* idx, float* weights, const int32_t* candidate_idx,
                     const float* candidate_weights, LoadStats* stats) {
  const int k = options.topk;
  const int64_t slots = tokens * k;
  stats->capacity = capacity;
  stats->demand_per_expert.assign(static_cast<size_t>(experts), 0);
  for (int64_t a = 0; a < slots; ++a) {
    if (idx[a] >= 0) ++stats->demand_per_expert[idx[a]];
  }
  std::vector<int64_t>& load = stats->tokens_per_expert;
  if (capacity <= 0) {
    load = stats->demand_per_expert;
  } else {
    // The order in which assignments claim room: token order, or highest weight first.
    std::vector<int64_t> order(static_cast<size_t>(slots));
    std::iota(order.begin(), order.end(), 0);
    if (options.drop_policy == DropPolicy::kProbability) {
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return weights[a] > weights[b]; });
    }
    load.assign(static_cast<size_t>(experts), 0);
    std::vector<int64_t> overflow;
    for (int64_t a : order) {
      const int32_t e = idx[a];
      if (e < 0) continue;
      if (load[e] < capacity) {
        ++load[e];
      } else {
        overflow.push_back(a);
      }
    }
    if (!overflow.empty() && options.overflow == OverflowPolicy::kError) {
      const int32_t e = idx[overflow.front()];
      return overCapacity(options, e, stats->demand_per_expert[e], capacity, tokens);
    }
    const bool reroute = options.overflow == OverflowPolicy::kReroute;
    const int c = options.reroute_candidates;
    for (int64_t a : overflow) {
      const int64_t t = a / k;
      int32_t target = -1;
      float target_weight = 0.0f;
      for (int i = 0; reroute && i < c && target < 0; ++i) {
        const int32_t e = candidate_idx[t * c + i];
        if (e < 0 || load[e] >= capacity) continue;
        bool used = false;
        for (int j = 0; j < k; ++j) used = used || idx[t * k + j] == e;
        if (used) continue;
        target = e;
        target_weight = candidate_weights[t * c + i];
      }
      idx[a] = target;
      weights[a] = target_weight;
      if (target >= 0) {
        ++load[target];
        ++stats->rerouted;
      } else {
        ++stats->dropped;
      }
    }
  }
  stats->imbalance = imbalanceOf(load);
  return Status::ok();
}

Status overCapacity(const RouterOptions& options, int expert, int64_t demand, int64_t capacity,
                    int64_t tokens) {
  return makeError(StatusCode::kInvalidArgument,
                   "expert {} is over capacity: {} assignments for a capacity of {} "
                   "(capacity_factor={}, {} tokens, top-{}); raise capacity_factor or use "
                   "OverflowPolicy::kDrop or kReroute",
                   expert, demand, capacity, options.capacity_factor, tokens, options.topk);
}

double imbalanceOf(const std::vector<int64_t>& load) {
  const int64_t total = std::accumulate(load.begin(), load.end(), int64_t{0});
  const int64_t max = load.empty() ? 0 : *std::max_element(load.begin(), load.end());
  return total > 0 ? static_cast<double>(max) * static_cast<double>(load.size()) /
                         static_cast<double>(total)
                   : 1.0;
}

}  // namespace moecomm
