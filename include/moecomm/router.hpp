// Routing: which experts each token visits and with what weight.
#pragma once

#include "moecomm/export.hpp"
#include "moecomm/types.hpp"

namespace moecomm {

struct RouterOptions {
  int topk = 0;              // experts per token, 1..E
  bool renormalize = false;  // make each token's k weights sum to 1
};

// The routing of T tokens: topk_idx [T, k] i32 (an expert id, or -1 for an unused slot) and
// topk_weights [T, k] f32. Dispatch also accepts i64 indices made elsewhere (e.g. torch.topk).
struct Routing {
  Tensor topk_idx;
  Tensor topk_weights;
};

class MOECOMM_API Router {
 public:
  explicit Router(const RouterOptions& options);  // throws Error on invalid options
  // logits [T, E] f32, finite. Top-k over softmax(logits) per token, descending, ties broken toward
  // the lower expert id. Non-finite logits are rejected with kInvalidArgument naming the token.
  Routing route(const TensorView& logits, ExecContext context = {}) const;

 private:
  RouterOptions options_;
};

}  // namespace moecomm
