// Dispatch and combine: carry each token to the ranks holding its experts, laid out expert by
// expert, and bring the weighted results home. Forward and backward.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "moecomm/export.hpp"
#include "moecomm/group.hpp"
#include "moecomm/types.hpp"

namespace moecomm {

// Where the tokens of this rank go, computed locally from topk_idx (no communication).
struct DispatchLayout {
  std::vector<int64_t> tokens_per_rank;    // [ranks]: tokens sent to each rank (once per rank)
  std::vector<int64_t> tokens_per_expert;  // [E]: routed slots per global expert
  std::vector<uint8_t> is_token_in_rank;   // [T * ranks], row-major
};

MOECOMM_API DispatchLayout computeLayout(const Group& group, const TensorView& topk_idx);

// How a dispatch lays out what a rank receives (docs/architecture.md).
enum class BatchLayout {
  // One row per (token, local expert), grouped expert by expert: ready for grouped GEMMs, and
  // combine applies the routing weights. A token that visits 4 local experts is written 4 times.
  kExpertMajor,
  // One row per (token, receiving rank), as DeepEP's normal mode: each token arrives once, with
  // its local expert ids and weights ([rows, k], -1 where none), and the experts read the rows in
  // place. Combine takes one row per received token (the rank's own weighted sum over its
  // experts) and sums them over ranks without weights.
  kTokenMajor,
};

struct DispatchOptions {
  int expert_alignment = 1;  // pad each local expert's rows to a multiple of this (>= 1)
  // Global capacity: the most rows one expert accepts from all ranks together (0 = unlimited).
  // Rows past it are refused in (source rank, source token) order: lower source ranks first.
  // A refused slot contributes nothing to combine and gets zero gradients.
  int64_t expert_capacity = 0;
  // Static shapes: every expert's segment is exactly expert_capacity rows (rounded up to the
  // alignment), whatever arrives. Needs expert_capacity > 0. Expert-major only, as is an
  // alignment above 1.
  bool pad_to_capacity = false;
  BatchLayout layout = BatchLayout::kExpertMajor;  // last, so {alignment, capacity} still works
  // Dispatch without a host wait (needs pad_to_capacity, so the batch's shape is static): the
  // GPU-native path sizes its buffers for the worst case instead of reading the counts back, and
  // the counts stay on the batch's device in ExpertBatch::device_counts until collectCounts. On
  // every path the host vectors expert_counts, expert_demand and tokens_from_rank are then empty
  // and refused is -1 until collectCounts. docs/cuda.md says what it costs.
  bool sync_free = false;
};

// Everything combine and the backward passes need to reuse a dispatch's layout without exchanging
// counts again. Cheap to copy; valid for the group that made it.
class MOECOMM_API DispatchHandle {
 public:
  struct Impl;
  DispatchHandle() = default;
  explicit DispatchHandle(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  bool valid() const noexcept { return impl_ != nullptr; }
  const Impl* impl() const noexcept { return impl_.get(); }

  // Rows of the batch: expert-major with its padding, or token-major's received tokens.
  int64_t numRows() const noexcept;
  int64_t numTokens() const noexcept;  // T of the dispatching rank
  // True when the dispatch ran GPU-native (its layout lives on the GPU; docs/cuda.md).
  bool onDevice() const noexcept;

 private:
  std::shared_ptr<const Impl> impl_;
};

// The received tokens. Expert-major: for local expert e, rows [offsets[e], offsets[e] + counts[e])
// hold the tokens routed to it, ordered by source rank and then by source token index; rows from
// offsets[e] + counts[e] up to offsets[e + 1] are alignment padding (zeros, weight 0).
// Token-major: row r is the r-th token received, ordered by source rank and then by source token
// index; topk_idx and topk_weights say which local experts it is for.
struct ExpertBatch {
  Tensor x;  // [num_rows, H], dispatch dtype
  // FP8 dispatch only: [num_rows, ceil(H / 128)] f32, each row's block scales as sent with its
  // token (zeros on padding rows); empty otherwise. x * scale is the token (moecomm/quant.hpp).
  Tensor x_scales;
  Tensor row_weights;  // [num_rows] f32: the routing weight of each row (expert-major only)
  // Token-major only: [num_rows, k] i32 local expert ids (0 .. local experts - 1; -1 for a slot
  // whose expert is elsewhere or that expert_capacity refused) and [num_rows, k] f32 weights
  // (0 where the id is -1).
  Tensor topk_idx;
  Tensor topk_weights;
  std::vector<int64_t> expert_counts;     // [local experts] real rows (token-major: slots kept)
  std::vector<int64_t> expert_offsets;    // [local experts + 1], multiples of the alignment
                                          // (expert-major only; empty when token-major)
  std::vector<int64_t> tokens_from_rank;  // [ranks] tokens received from each rank
  std::vector<int64_t> expert_demand;     // [local experts] rows offered, before expert_capacity
  int64_t refused = 0;                    // rows refused by expert_capacity
  // Sync-free dispatch only (DispatchOptions::sync_free): the counts as i64 on the batch's
  // device, written on the context's stream. Layout, with L local experts and R ranks:
  //   [0, L) demand per local expert, [L, 2L) rows kept per local expert, [2L, 2L + R) tokens
  //   received from each rank, [2L + R] rows refused, [2L + R + 1] first slot of this rank's
  //   topk_idx naming no expert, [2L + R + 2] first slot repeating its token's expert (-1: none).
  // Undefined otherwise.
  Tensor device_counts;
  DispatchHandle handle;
};

// Entries of ExpertBatch::device_counts for L local experts and R ranks.
inline int64_t dispatchCountsSize(int64_t local_experts, int64_t ranks) {
  return 2 * local_experts + ranks + 3;
}

// Fills expert_demand, expert_counts, tokens_from_rank and refused of a sync-free batch from its
// device_counts (one wait for the context's stream when they are on a GPU) and throws, on this
// rank only, what dispatch would have thrown for a bad topk_idx: a sync-free GPU dispatch cannot
// refuse it before returning: it routes an id outside [-1, E) nowhere and a repeated one twice. A
// batch whose counts are on the host already is left as it is.
MOECOMM_API void collectCounts(ExpertBatch& batch, ExecContext context = {});

// All calls are collective over the group and synchronous on CPU. On error they throw
// moecomm::Error on every rank (the rank with the bad input gets its own error, the others
// kRemoteError naming it) and caller-provided outputs are left untouched: an output is written only
// when the call succeeds.
// Where this rank's last dispatch or combine (or backward) spent its time, in milliseconds. Waits
// for slower ranks land in the exchanges.
struct DispatchTimes {
  double layout_ms = 0;          // validation and routing plan (dispatch)
  double count_exchange_ms = 0;  // the count round and window sizing (dispatch)
  double pack_ms = 0;            // rows into messages (combine: the expert-side weighted sums)
  double transfer_ms = 0;        // the payload exchange(s)
  double unpack_ms = 0;          // messages into the output (combine: the sum over ranks)
};

class MOECOMM_API Dispatcher {
 public:
  explicit Dispatcher(Group& group, const DispatchOptions& options = {});
  ~Dispatcher();
  Dispatcher(Dispatcher&&) noexcept;
  Dispatcher& operator=(Dispatcher&&) noexcept;

  // x [T, H] in the group dtype; topk_idx [T, k] i32 or i64 (-1 = unused slot); topk_weights [T, k]
  // f32. Each token travels once per destination rank, with its weights for that rank's experts.
  ExpertBatch dispatch(const TensorView& x, const TensorView& topk_idx,
                       const TensorView& topk_weights, ExecContext context = {});

  // FP8 dispatch, for groups of dtype kFP8E4M3 (as DeepEP's dispatch of (x_fp8, scales)): x [T, H]
  // fp8 e4m3 and x_scales [T, ceil(H / 128)] f32 from quantizeFp8 travel together, a quarter of
  // the bytes of f32 (half of bf16) plus 1/32 for the scales; the batch gets both, unchanged.
  ExpertBatch dispatch(const TensorView& x, const TensorView& x_scales, const TensorView& topk_idx,
                       const TensorView& topk_weights, ExecContext context = {});

  // y [num_rows, H] (f32 or bf16, the expert outputs in the batch's layout) -> out [T, H] of y's
  // dtype: out[t] = sum over t's slots of weight * y[row], reduced per rank before sending back, in
  // f32. A token with no valid slot gets zeros. Token-major: y holds one row per received token
  // (weights already applied by the caller) and out[t] = sum over the ranks t visited of its row.
  void combine(const TensorView& y, const DispatchHandle& handle, const TensorView& out,
               ExecContext context = {});
  Tensor combine(const TensorView& y, const DispatchHandle& handle, ExecContext context = {});

  // Backward of dispatch: grad_x[t] = sum over t's rows of grad_rows[row] (no weights; in
  // either layout).
  void dispatchBackward(const TensorView& grad_rows, const DispatchHandle& handle,
                        const TensorView& grad_x, ExecContext context = {});

  // Backward of combine: grad_y[row] = weight(row) * grad_out[t(row)] (zero on padding rows) and
  // grad_weights[t, j] = <grad_out[t], y[row(t, j)]> (zero for unused slots). grad_out, y, grad_y
  // share one dtype; grad_weights is [T, k] f32. Token-major: combine applies no weights, so
  // grad_y[row] = grad_out[t(row)] and grad_weights is zero (the weights' gradient comes from the
  // caller's own weighted sum over its experts).
  void combineBackward(const TensorView& grad_out, const TensorView& y,
                       const DispatchHandle& handle, const TensorView& grad_y,
                       const TensorView& grad_weights, ExecContext context = {});

  // The phases of the last call on this dispatcher.
  const DispatchTimes& lastTimes() const noexcept;

  struct State;

 private:
  std::unique_ptr<State> state_;
};

}  // namespace moecomm
