// Routing: which experts each token visits and with what weight, with load balancing and capacity
// control. Formulas and policies: docs/routing.md.
#pragma once

#include <cstdint>
#include <vector>

#include "moecomm/export.hpp"
#include "moecomm/types.hpp"

namespace moecomm {

class Group;

enum class ScoreFunction : int32_t {
  kSoftmax = 0,          // p = softmax(logits) over all experts; select the k largest p
  kSigmoid = 1,          // p = sigmoid(logits) (DeepSeek-V3); select the k largest p
  kTopkThenSoftmax = 2,  // select the k largest logits, weights = softmax over those k (Mixtral)
};

enum class DropPolicy : int32_t {
  kProbability = 0,  // an over-full expert keeps its highest-weight assignments
  kPosition = 1,     // an over-full expert keeps its first assignments in token order
};

enum class OverflowPolicy : int32_t {
  kDrop = 0,     // an assignment past capacity becomes -1 with weight 0
  kReroute = 1,  // it moves to the token's next-best expert with room, else it is dropped
  kError = 2,    // routing fails naming the expert, its load and its capacity
};

struct RouterOptions {
  int topk = 0;  // experts per token, 1..E
  ScoreFunction score = ScoreFunction::kSoftmax;
  bool renormalize = false;     // make each token's k weights sum to 1 (before scaling)
  float scaling_factor = 1.0f;  // multiplies every weight
  int num_groups = 0;           // > 1: experts in equal contiguous groups, group-limited routing
  int topk_groups = 0;          // groups kept per token when num_groups > 1
  // Capacity per expert: max(min_capacity, ceil(capacity_factor * T * k / E)); 0 = dropless.
  double capacity_factor = 0.0;
  int64_t min_capacity = 0;
  DropPolicy drop_policy = DropPolicy::kProbability;
  OverflowPolicy overflow = OverflowPolicy::kDrop;
  int reroute_candidates = 4;  // how deep past the top-k a reroute looks
};

// Load statistics of one routing call, for monitoring and for balancing.
struct LoadStats {
  std::vector<int64_t> demand_per_expert;  // assignments the gate chose, before capacity
  std::vector<int64_t> tokens_per_expert;  // assignments kept, after capacity and reroutes
  int64_t capacity = 0;                    // per expert; 0 = dropless
  int64_t dropped = 0;                     // slots set to -1 by capacity
  int64_t rerouted = 0;                    // slots moved to another expert
  double imbalance = 1.0;                  // max / mean of tokens_per_expert (1 = perfectly even)
};

// The routing of T tokens: topk_idx [T, k] i32 (an expert id, or -1 for an unused or dropped slot)
// and topk_weights [T, k] f32. Dispatch also accepts i64 indices made elsewhere (torch.topk).
// selected_idx [T, k] i32 is the gate's choice before capacity (the backward pass needs it).
struct Routing {
  Tensor topk_idx;
  Tensor topk_weights;
  Tensor selected_idx;
  LoadStats stats;  // empty after routeOnStream until Router::collectStats
  // The statistics as i64 on the logits' device, filled by routeOnStream (and by route on CUDA
  // logits), readable there without a host wait. Layout, with E experts:
  //   [0, E) demand per expert, [E, 2E) kept per expert, [2E] dropped, [2E + 1] rerouted,
  //   [2E + 2] first token with a non-finite logit or bias (-1: none),
  //   [2E + 3] first slot past capacity in claim order under OverflowPolicy::kError (-1: none).
  Tensor device_stats;
};

// Entries of Routing::device_stats for E experts.
inline int64_t deviceStatsSize(int64_t experts) {
  return 2 * experts + 4;
}

struct RouterLossOptions {
  double aux_loss_coeff = 0.0;  // load-balancing loss E * sum_e f_e * P_e, times this
  int64_t aux_seq_len = 0;      // > 0: per-sequence variant over consecutive chunks of this length
  double z_loss_coeff = 0.0;    // mean_t logsumexp(logits_t)^2, times this
};

struct RouterLosses {
  double aux_loss = 0.0;
  double z_loss = 0.0;
};

class MOECOMM_API Router {
 public:
  explicit Router(const RouterOptions& options);  // throws Error on invalid options
  const RouterOptions& options() const noexcept { return options_; }

  // logits [T, E] f32, all finite (NaN or infinity is kInvalidArgument naming the token and
  // expert; a silent wrong routing is never produced). expert_bias: null or [E] f32, added to the
  // selection scores only. Ties go to the lower expert (and group) id.
  Routing route(const TensorView& logits, const TensorView* expert_bias = nullptr,
                ExecContext context = {}) const;
  // route() without its wait, for CUDA logits (inference engines, overlap): the gate, capacity and
  // statistics are ordered on the context's stream and the host does not wait for them. Until
  // collectStats, `stats` is empty and the errors route() raises are deferred: a token with a
  // non-finite logit or bias is routed nowhere (-1, weight 0), and under OverflowPolicy::kError
  // the overflowing assignments stay. collectStats raises both. More than 1024 experts route
  // through the host and wait. On host logits it is route() plus device_stats (on the host).
  Routing routeOnStream(const TensorView& logits, const TensorView* expert_bias = nullptr,
                        ExecContext context = {}) const;
  // Fills routing.stats from routing.device_stats (waiting for the context's stream when they
  // are on a GPU) and returns them; throws what route() would have thrown for the same inputs.
  // A routing whose stats were already collected (route()) is returned as it is.
  const LoadStats& collectStats(Routing& routing, ExecContext context = {}) const;

  // The balancing losses of a routing. With `global_tokens_per_expert` (summed over the group, see
  // globalLoad) f_e uses the global counts; otherwise this rank's.
  // With every tensor on one GPU both run there, one thread per token, on the context's stream:
  // losses waits for its per-token terms (they sum on the host in token order); backward does not
  // wait, and does not look for non-finite logits again (route() did): their rows get
  // non-finite gradients. Tensors on mixed devices go through host copies, and wait.
  RouterLosses losses(const TensorView& logits, const Routing& routing,
                      const RouterLossOptions& loss_options,
                      const std::vector<int64_t>* global_tokens_per_expert = nullptr,
                      ExecContext context = {}) const;

  // grad_logits [T, E] f32 = d/dlogits of (sum grad_weights * topk_weights + the losses).
  // grad_weights: [T, k] f32 (may be null for losses only).
  void backward(const TensorView& logits, const Routing& routing, const TensorView* grad_weights,
                const RouterLossOptions& loss_options, const TensorView& grad_logits,
                const std::vector<int64_t>* global_tokens_per_expert = nullptr,
                ExecContext context = {}) const;

 private:
  RouterOptions options_;
};

// Collective: tokens_per_expert summed over every rank of the group.
MOECOMM_API std::vector<int64_t> globalLoad(Group& group, const LoadStats& local);

// Aux-loss-free balancing: bias[e] += rate * sign(mean_load - load[e]). bias: [E] f32, on the
// host or a GPU (updated through a host copy on the context's stream, which it waits for).
MOECOMM_API void updateExpertBias(const TensorView& bias, const std::vector<int64_t>& load,
                                  float rate, ExecContext context = {});

}  // namespace moecomm
