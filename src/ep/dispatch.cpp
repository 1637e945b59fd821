// Dispatch: count exchange, pack once per destination rank, all-to-all-v, unpack expert-major.
#include <algorithm>
#include <cstring>

#include "moecomm/quant.hpp"
#include "src/core/env.hpp"
#include "src/core/host_mirror.hpp"
#include "src/core/stopwatch.hpp"
#include "src/core/stream_copy.hpp"
#include "src/core/tensor_checks.hpp"
#include "src/ep/batch_counts.hpp"
#include "src/ep/device_exchange.hpp"
#include "src/ep/dispatcher_state.hpp"
#include "src/ep/expert_layout.hpp"
#include "src/ep/routing_plan.hpp"
#include "src/ep/stream_output.hpp"
#include "transport/bulk_copy.hpp"

namespace moecomm {

namespace {

ExpertPlacement placementOf(const Group::Impl& group) {
  return {group.config.num_experts, group.local_experts, group.size, group.config.topk};
}

bool isFp8(const GroupConfig& config) {
  return config.dtype == DType::kFP8E4M3;
}

// FP8 rows carry one f32 scale per 128-element block after their values.
int64_t scaleBlocks(const GroupConfig& config) {
  return isFp8(config) ? fp8ScaleBlocks(config.hidden) : 0;
}

// One token's row on the wire: its values, then (FP8) its scales at a 4-byte boundary, padded
// (with zeros) to 16 bytes, so that every row and the ids and weights after the rows stay
// aligned whatever the hidden size.
struct WireRow {
  size_t values = 0;     // bytes of the token's values
  size_t scales_at = 0;  // where its scales start
  size_t scales = 0;     // bytes of its scales (FP8), else 0
  size_t bytes = 0;      // the whole row, padding included
};

WireRow wireRow(const GroupConfig& config) {
  WireRow r;
  r.values = static_cast<size_t>(config.hidden) * dtypeSize(config.dtype);
  r.scales = static_cast<size_t>(scaleBlocks(config)) * sizeof(float);
  r.scales_at = (r.values + 3) / 4 * 4;
  r.bytes = (r.scales_at + r.scales + 15) / 16 * 16;
  return r;
}

Status checkDispatchInputs(const Group::Impl& group, const DispatchOptions& options,
                           const TensorView& x, const TensorView* x_scales,
                           const TensorView& topk_idx, const TensorView& topk_weights,
                           RoutingPlan* plan) {
  MOECOMM_RETURN_IF_ERROR(checkDispatchOptions(options));
  const GroupConfig& config = group.config;
  MOECOMM_RETURN_IF_ERROR(checkMatrix("x", x, -1, config.hidden, {config.dtype}));
  const int64_t tokens = x.shape[0];
  if (isFp8(config) && x_scales == nullptr) {
    return makeError(StatusCode::kInvalidArgument,
                     "the group's dtype is fp8e4m3, so dispatch needs x_scales: call "
                     "dispatch(x, x_scales, topk_idx, topk_weights) with quantizeFp8's scales");
  }
  if (!isFp8(config) && x_scales != nullptr) {
    return makeError(StatusCode::kInvalidArgument,
                     "x_scales given but the group's dtype is {}: scales go with fp8e4m3 groups "
                     "only",
                     dtypeName(config.dtype));
  }
  if (x_scales != nullptr) {
    MOECOMM_RETURN_IF_ERROR(
        checkMatrix("x_scales", *x_scales, tokens, scaleBlocks(config), {DType::kF32}));
  }
  MOECOMM_RETURN_IF_ERROR(
      checkMatrix("topk_idx", topk_idx, tokens, config.topk, {DType::kI32, DType::kI64}));
  MOECOMM_RETURN_IF_ERROR(
      checkMatrix("topk_weights", topk_weights, tokens, config.topk, {DType::kF32}));
  return planRouting(topk_idx, placementOf(group), plan);
}

// Bytes one token occupies in a dispatch message: its row, then k local expert ids and k weights.
size_t tokenBytes(const GroupConfig& config) {
  return wireRow(config).bytes +
         static_cast<size_t>(config.topk) * (sizeof(int32_t) + sizeof(float));
}

// `with_rows` false: only the ids and weights (a token-major batch reads this rank's own rows
// straight from x).
void packForRank(const Group::Impl& group, const RoutingPlan& plan, const TensorView& x,
                 const TensorView* x_scales, const float* weights, int peer, bool with_rows,
                 bool stream, std::byte* out) {
  const int k = plan.topk;
  const WireRow wire = wireRow(group.config);
  const size_t row_bytes = with_rows ? wire.bytes : 0;
  const auto& tokens = plan.rank_tokens[peer];
  const size_t n = tokens.size();
  std::byte* rows = out;
  auto* ids = reinterpret_cast<int32_t*>(rows + n * row_bytes);
  auto* w = reinterpret_cast<float*>(ids + n * k);
  const int first = peer * group.local_experts;
  for (size_t i = 0; i < n; ++i) {
    const int64_t t = tokens[i];
    std::byte* row = rows + i * row_bytes;
    for (int j = 0; j < k; ++j) {
      const size_t slot = static_cast<size_t>(t * k + j);
      const bool here = plan.owner[slot] == peer;
      ids[i * k + j] = here ? plan.expert[slot] - first : -1;
      w[i * k + j] = here ? weights[slot] : 0.0f;
    }
    if (!with_rows) continue;
    outputCopy(row, static_cast<const std::byte*>(x.data) + t * wire.values, wire.values, stream);
    if (row_bytes > wire.values) std::memset(row + wire.values, 0, row_bytes - wire.values);
    if (wire.scales > 0) {
      std::memcpy(row + wire.scales_at,
                  static_cast<const std::byte*>(x_scales->data) + t * wire.scales, wire.scales);
    }
  }
}

// Bytes of rows before the ids in source p's message of n tokens: none in this rank's message to
// itself when its own rows are read from x (token-major).
size_t rowsBytesOf(const Group::Impl& group, int p, int64_t n, const WireRow& wire,
                   bool own_rows_from_x) {
  return own_rows_from_x && p == group.rank ? 0 : static_cast<size_t>(n) * wire.bytes;
}

// The rows offered to each local expert, from the ids that follow every message's rows, with a
// check that the ids make sense.
Status localDemand(const Group::Impl& group, const Staging& staging,
                   const DispatchHandle::Impl& handle, bool own_rows_from_x,
                   std::vector<int64_t>* demand) {
  const int k = group.config.topk;
  const int local = group.local_experts;
  const WireRow wire = wireRow(group.config);
  demand->assign(static_cast<size_t>(local), 0);
  for (int p = 0; p < group.size; ++p) {
    const int64_t n = handle.recv_tokens[p];
    const auto* ids = reinterpret_cast<const int32_t*>(
        staging.recvPayload(p) + rowsBytesOf(group, p, n, wire, own_rows_from_x));
    for (int64_t i = 0; i < n * k; ++i) {
      if (ids[i] >= local) {
        return makeError(StatusCode::kInternalError,
                         "rank {}: rank {} sent local expert id {} >= {}", group.rank, p, ids[i],
                         local);
      }
      if (ids[i] >= 0) ++(*demand)[ids[i]];
    }
  }
  return Status::ok();
}

// Lays the received tokens out expert-major and fills the receive side of the handle.
Status unpack(const Group::Impl& group, const Staging& staging, const DispatchOptions& options,
              DispatchHandle::Impl& handle, ExpertBatch& batch) {
  const int k = group.config.topk;
  const int local = group.local_experts;
  const WireRow wire = wireRow(group.config);
  const size_t row_bytes = wire.bytes;
  const size_t value_bytes = wire.values;
  const size_t scale_bytes = wire.scales;
  // Pass 1: rows per local expert.
  std::vector<int64_t> demand;
  MOECOMM_RETURN_IF_ERROR(localDemand(group, staging, handle, false, &demand));
  const int64_t rows = layoutExperts(options, demand, &batch);
  handle.num_rows = rows;
  // Only padding rows need zeros; every other row is written once below.
  batch.x = Tensor::empty({rows, group.config.hidden}, group.config.dtype);
  if (scale_bytes > 0)
    batch.x_scales = Tensor::empty({rows, scaleBlocks(group.config)}, DType::kF32);
  for (int e = 0; e < local; ++e) {
    const int64_t first_pad = batch.expert_offsets[e] + batch.expert_counts[e];
    const auto pad_rows = static_cast<size_t>(batch.expert_offsets[e + 1] - first_pad);
    std::memset(static_cast<std::byte*>(batch.x.data()) + first_pad * value_bytes, 0,
                pad_rows * value_bytes);
    if (scale_bytes > 0) {
      std::memset(static_cast<std::byte*>(batch.x_scales.data()) + first_pad * scale_bytes, 0,
                  pad_rows * scale_bytes);
    }
  }
  batch.row_weights = Tensor::zeros({rows}, DType::kF32);
  handle.row_weights.assign(static_cast<size_t>(rows), 0.0f);
  handle.recv_rows.assign(static_cast<size_t>(handle.receivedTokens() * k), -1);

  // Pass 2: place each (token, local expert) pair, in source-rank then send order. An output
  // far larger than the caches is written with streaming stores (it is read next by the experts,
  // from memory either way).
  const bool stream = streamsOutput(static_cast<size_t>(rows) * row_bytes);
  std::vector<int64_t> cursor(batch.expert_offsets.begin(), batch.expert_offsets.end() - 1);
  auto* out_rows = static_cast<std::byte*>(batch.x.data());
  auto* out_scales = scale_bytes > 0 ? static_cast<std::byte*>(batch.x_scales.data()) : nullptr;
  int64_t g = 0;
  for (int p = 0; p < group.size; ++p) {
    const int64_t n = handle.recv_tokens[p];
    const std::byte* src_rows = staging.recvPayload(p);
    const auto* ids = reinterpret_cast<const int32_t*>(src_rows + n * row_bytes);
    const auto* w = reinterpret_cast<const float*>(ids + n * k);
    for (int64_t i = 0; i < n; ++i, ++g) {
      for (int j = 0; j < k; ++j) {
        const int32_t e = ids[i * k + j];
        if (e < 0) continue;
        if (cursor[e] - batch.expert_offsets[e] >= batch.expert_counts[e]) continue;  // refused
        const int64_t row = cursor[e]++;
        outputCopy(out_rows + row * value_bytes, src_rows + i * row_bytes, value_bytes, stream);
        if (scale_bytes > 0) {
          std::memcpy(out_scales + row * scale_bytes, src_rows + i * row_bytes + wire.scales_at,
                      scale_bytes);
        }
        handle.row_weights[row] = w[i * k + j];
        handle.recv_rows[g * k + j] = row;
      }
    }
  }
  if (stream) streamFence();
  if (rows > 0)
    std::memcpy(batch.row_weights.data(), handle.row_weights.data(), rows * sizeof(float));
  return Status::ok();
}

// Token-major: the received tokens as they came, one row each, with their local expert ids and
// weights. expert_capacity refuses slots in the same (source rank, send order) as expert-major.
// This rank's own tokens never went through a message: their rows come straight from x (the
// message to itself carries only their ids and weights), one copy instead of two.
struct OwnRows {
  const TensorView& x;
  const TensorView* x_scales;
  const std::vector<int32_t>& tokens;
};

Status unpackTokenMajor(const Group::Impl& group, const Staging& staging,
                        const DispatchOptions& options, const OwnRows& own,
                        DispatchHandle::Impl& handle, ExpertBatch& batch) {
  const int k = group.config.topk;
  const int local = group.local_experts;
  const WireRow wire = wireRow(group.config);
  std::vector<int64_t> demand;
  MOECOMM_RETURN_IF_ERROR(localDemand(group, staging, handle, true, &demand));
  layoutExperts(options, demand, &batch);
  batch.expert_offsets.clear();
  const int64_t rows = handle.receivedTokens();
  handle.num_rows = rows;
  batch.x = Tensor::empty({rows, group.config.hidden}, group.config.dtype);
  if (wire.scales > 0)
    batch.x_scales = Tensor::empty({rows, scaleBlocks(group.config)}, DType::kF32);
  batch.topk_idx = Tensor::empty({rows, k}, DType::kI32);
  batch.topk_weights = Tensor::empty({rows, k}, DType::kF32);

  const bool stream = streamsOutput(static_cast<size_t>(rows) * wire.values);
  auto* out_rows = static_cast<std::byte*>(batch.x.data());
  auto* out_ids = static_cast<int32_t*>(batch.topk_idx.data());
  auto* out_w = static_cast<float*>(batch.topk_weights.data());
  std::vector<int64_t> taken(static_cast<size_t>(local), 0);
  int64_t g = 0;
  for (int p = 0; p < group.size; ++p) {
    const int64_t n = handle.recv_tokens[p];
    const std::byte* src_rows = staging.recvPayload(p);
    auto* out_scales = wire.scales > 0 ? static_cast<std::byte*>(batch.x_scales.data()) : nullptr;
    if (p == group.rank) {
      const auto* x = static_cast<const std::byte*>(own.x.data);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t t = own.tokens[i];
        outputCopy(out_rows + (g + i) * wire.values, x + t * wire.values, wire.values, stream);
        if (out_scales != nullptr) {
          std::memcpy(out_scales + (g + i) * wire.scales,
                      static_cast<const std::byte*>(own.x_scales->data) + t * wire.scales,
                      wire.scales);
        }
      }
    } else if (wire.bytes == wire.values) {  // rows without padding arrive as one block
      outputCopy(out_rows + g * wire.values, src_rows, static_cast<size_t>(n) * wire.values,
                 stream);
    } else {
      for (int64_t i = 0; i < n; ++i) {
        outputCopy(out_rows + (g + i) * wire.values, src_rows + i * wire.bytes, wire.values,
                   stream);
        if (out_scales != nullptr) {
          std::memcpy(out_scales + (g + i) * wire.scales,
                      src_rows + i * wire.bytes + wire.scales_at, wire.scales);
        }
      }
    }
    const auto* ids =
        reinterpret_cast<const int32_t*>(src_rows + rowsBytesOf(group, p, n, wire, true));
    const auto* w = reinterpret_cast<const float*>(ids + n * k);
    for (int64_t s = 0; s < n * k; ++s) {
      const int32_t e = ids[s];
      const bool kept = e >= 0 && taken[e] < batch.expert_counts[e];
      if (kept) ++taken[e];
      out_ids[g * k + s] = kept ? e : -1;
      out_w[g * k + s] = kept ? w[s] : 0.0f;
    }
    g += n;
  }
  if (stream) streamFence();
  return Status::ok();
}

// `prior`: a failure before the call (staging CUDA inputs), reported to the peers like bad input.
Status runDispatch(Dispatcher::State& state, const TensorView& x, const TensorView* x_scales,
                   const TensorView& topk_idx, const TensorView& topk_weights, ExpertBatch* out,
                   const Status& prior) {
  Group::Impl& group = *state.group;
  Staging& staging = state.staging;
  const uint64_t sequence = group.takeSequence();
  const int n = group.size;
  staging.prepare(n);
  Stopwatch watch;
  DispatchTimes& times = state.times;
  times = {};

  RoutingPlan plan;
  Status local = prior.isOk() ? checkDispatchInputs(group, state.options, x, x_scales, topk_idx,
                                                    topk_weights, &plan)
                              : prior;
  times.layout_ms = watch.lap();

  // Phase 1: counts. Every rank sends its whole row of counts to every rank, so all learn the
  // full matrix: what each receives, and where each message will land in each window.
  std::vector<int64_t> row(static_cast<size_t>(n), 0);
  for (int p = 0; p < n && local.isOk(); ++p) {
    row[p] = static_cast<int64_t>(plan.rank_tokens[p].size());
  }
  const size_t row_bytes_counts = static_cast<size_t>(n) * sizeof(int64_t);
  for (int p = 0; p < n; ++p) {
    std::byte* payload =
        staging.sendPayload(p, row_bytes_counts, WireOp::kDispatchCounts, sequence, row[p]);
    std::memcpy(payload, row.data(), row_bytes_counts);
    staging.expect(p, row_bytes_counts);
  }
  MOECOMM_RETURN_IF_ERROR(exchange(group, staging, WireOp::kDispatchCounts, sequence, 0, local));

  auto handle = std::make_shared<DispatchHandle::Impl>();
  handle->group = &group;
  handle->ranks = n;
  handle->topk = group.config.topk;
  handle->hidden = group.config.hidden;
  handle->tokens = plan.tokens;
  handle->slot_owner = plan.owner;
  handle->recv_tokens.resize(static_cast<size_t>(n));
  handle->count_matrix.resize(static_cast<size_t>(n) * n);
  for (int p = 0; p < n; ++p) {
    if (staging.received[p] != sizeof(WireHeader) + row_bytes_counts) {
      return makeError(StatusCode::kInternalError,
                       "rank {}: the count message from rank {} has {} bytes, expected {}",
                       group.rank, p, staging.received[p], sizeof(WireHeader) + row_bytes_counts);
    }
    std::memcpy(handle->count_matrix.data() + static_cast<size_t>(p) * n, staging.recvPayload(p),
                row_bytes_counts);
    handle->recv_tokens[p] = staging.recvHeader(p).count;
  }

  // Every rank sizes the windows from the same matrix: the most any rank will receive in any
  // round this handle can drive (rows up to f32 on the way back, dispatch rows on the way out).
  const size_t per_token = tokenBytes(group.config);
  const size_t back_row = static_cast<size_t>(group.config.hidden) * sizeof(float);
  const size_t out_row = std::max(per_token, back_row);
  size_t need = 0;
  for (int d = 0; d < n; ++d) {
    size_t towards = 0, back = 0;
    for (int s = 0; s < n; ++s) {
      towards += putSlotBytes(static_cast<size_t>(handle->count_matrix[s * n + d]) * out_row);
      back += putSlotBytes(static_cast<size_t>(handle->count_matrix[d * n + s]) * back_row);
    }
    need = std::max({need, towards, back});
  }
  MOECOMM_RETURN_IF_ERROR(ensureWindow(group, staging, need));
  times.count_exchange_ms = watch.lap();

  // Phase 2: payloads sized exactly from the counts.
  const auto* weights = topk_weights.as<const float>();
  const bool token_major = state.options.layout == BatchLayout::kTokenMajor;
  // A token-major batch reads this rank's own rows from x: its message to itself has no rows.
  auto bytesPerToken = [&](int p) {
    return token_major && p == group.rank ? per_token - wireRow(group.config).bytes : per_token;
  };
  // Messages to peers whose windows this rank can write are packed there directly.
  const SizeMatrix sizes = handle->sizes(per_token, true);
  for (int p = 0; p < n; ++p) {
    const auto count = static_cast<int64_t>(plan.rank_tokens[p].size());
    const size_t bytes = static_cast<size_t>(count) * bytesPerToken(p);
    std::byte* payload =
        placeInWindow(group, staging, sizes, p, WireOp::kDispatchPayload, sequence, count);
    // A large message built in the receiver's window skips this core's cache, as a put's copy
    // would (transport/bulk_copy.hpp); one in a send buffer is read again at once.
    const bool stream = payload != nullptr && bytes >= streamCopyThreshold();
    if (payload == nullptr) {
      payload = staging.sendPayload(p, bytes, WireOp::kDispatchPayload, sequence, count);
    }
    packForRank(group, plan, x, x_scales, weights, p, bytesPerToken(p) == per_token, stream,
                payload);
    staging.expect(p, static_cast<size_t>(handle->recv_tokens[p]) * bytesPerToken(p));
  }
  times.pack_ms = watch.lap();
  MOECOMM_RETURN_IF_ERROR(
      exchange(group, staging, WireOp::kDispatchPayload, sequence, 1, Status::ok(), &sizes));
  times.transfer_ms = watch.lap();
  for (int p = 0; p < n; ++p) {
    const size_t expected =
        sizeof(WireHeader) + static_cast<size_t>(handle->recv_tokens[p]) * bytesPerToken(p);
    if (staging.received[p] != expected || staging.recvHeader(p).count != handle->recv_tokens[p]) {
      return makeError(StatusCode::kInternalError,
                       "rank {}: dispatch payload from rank {} has {} bytes, expected {}",
                       group.rank, p, staging.received[p], expected);
    }
  }

  ExpertBatch batch;
  handle->token_major = token_major;
  const OwnRows own{x, x_scales, plan.rank_tokens[group.rank]};
  MOECOMM_RETURN_IF_ERROR(token_major
                              ? unpackTokenMajor(group, staging, state.options, own, *handle, batch)
                              : unpack(group, staging, state.options, *handle, batch));
  handle->send_tokens = std::move(plan.rank_tokens);
  batch.tokens_from_rank = handle->recv_tokens;
  batch.handle = DispatchHandle(std::move(handle));
  *out = std::move(batch);
  times.unpack_ms = watch.lap();
  return Status::ok();
}

// A staged batch goes back to the GPU of the caller's x.
void toDevice(ExpertBatch& batch, Device device, ExecContext context) {
  batch.x = copyTo(batch.x.view(), device, context);
  if (batch.x_scales.defined()) batch.x_scales = copyTo(batch.x_scales.view(), device, context);
  if (batch.row_weights.defined()) {
    batch.row_weights = copyTo(batch.row_weights.view(), device, context);
  }
  if (batch.topk_idx.defined()) {
    batch.topk_idx = copyTo(batch.topk_idx.view(), device, context);
    batch.topk_weights = copyTo(batch.topk_weights.view(), device, context);
  }
  if (batch.device_counts.defined()) {
    batch.device_counts = copyTo(batch.device_counts.view(), device, context);
  }
}

}  // namespace

Status checkHandle(const DispatchHandle& handle, const Group::Impl& group) {
  if (!handle.valid()) {
    return makeError(
        StatusCode::kInvalidUsage,
        "the DispatchHandle is empty; pass the handle of an ExpertBatch from dispatch");
  }
  if (handle.impl()->group != &group) {
    return makeError(StatusCode::kInvalidUsage,
                     "the DispatchHandle was made by a dispatch on another group; use it only with "
                     "the group that made it");
  }
  return Status::ok();
}

bool DispatchHandle::onDevice() const noexcept {
  return impl_ != nullptr && impl_->device != nullptr;
}

int64_t DispatchHandle::numRows() const noexcept {
  return impl_ ? impl_->num_rows : 0;
}
int64_t DispatchHandle::numTokens() const noexcept {
  return impl_ ? impl_->tokens : 0;
}

Dispatcher::Dispatcher(Group& group, const DispatchOptions& options)
    : state_(std::make_unique<State>()) {
  state_->group = group.sharedImpl();
  state_->options = options;
}
Dispatcher::~Dispatcher() = default;
const DispatchTimes& Dispatcher::lastTimes() const noexcept {
  return state_->times;
}
Dispatcher::Dispatcher(Dispatcher&&) noexcept = default;
Dispatcher& Dispatcher::operator=(Dispatcher&&) noexcept = default;

ExpertBatch Dispatcher::dispatch(const TensorView& x, const TensorView& topk_idx,
                                 const TensorView& topk_weights, ExecContext context) {
  ExpertBatch batch;
  Status status;
  if (deviceExchangeApplies(*state_->group, x, topk_idx, topk_weights)) {
    status = deviceDispatch(*state_, x, nullptr, topk_idx, topk_weights, context, &batch);
  } else {
    // Host tensors as they are; other CUDA tensors staged through pinned host memory.
    status = runMirrored<3, 0>(
        context, {&x, &topk_idx, &topk_weights}, {}, [&](auto& in, auto&, const Status& staged) {
          return runDispatch(*state_, in[0], nullptr, in[1], in[2], &batch, staged);
        });
  }
  if (status.isOk() && state_->options.sync_free && !batch.handle.onDevice()) {
    status = deferCounts(batch);
  }
  if (!status.isOk()) state_->group->raise(status);
  if (x.device.isCuda() && !batch.handle.onDevice()) toDevice(batch, x.device, context);
  return batch;
}

ExpertBatch Dispatcher::dispatch(const TensorView& x, const TensorView& x_scales,
                                 const TensorView& topk_idx, const TensorView& topk_weights,
                                 ExecContext context) {
  ExpertBatch batch;
  Status status;
  // GPU-native as the 16-bit rows are (values and scales move as two row payloads); the other
  // transports are staged.
  if (deviceExchangeApplies(*state_->group, x, topk_idx, topk_weights, &x_scales)) {
    status = deviceDispatch(*state_, x, &x_scales, topk_idx, topk_weights, context, &batch);
  } else {
    status = runMirrored<4, 0>(context, {&x, &x_scales, &topk_idx, &topk_weights}, {},
                               [&](auto& in, auto&, const Status& staged) {
                                 return runDispatch(*state_, in[0], &in[1], in[2], in[3], &batch,
                                                    staged);
                               });
  }
  if (status.isOk() && state_->options.sync_free && !batch.handle.onDevice()) {
    status = deferCounts(batch);
  }
  if (!status.isOk()) state_->group->raise(status);
  if (x.device.isCuda() && !batch.handle.onDevice()) toDevice(batch, x.device, context);
  return batch;
}

DispatchLayout computeLayout(const Group& group, const TensorView& topk_idx) {
  const Group::Impl& impl = group.impl();
  RoutingPlan plan;
  throwIfError(planRouting(topk_idx, placementOf(impl), &plan));
  DispatchLayout layout;
  layout.tokens_per_rank.resize(static_cast<size_t>(impl.size));
  layout.tokens_per_expert.assign(static_cast<size_t>(impl.config.num_experts), 0);
  layout.is_token_in_rank.assign(static_cast<size_t>(plan.tokens * impl.size), 0);
  for (int p = 0; p < impl.size; ++p) {
    layout.tokens_per_rank[p] = static_cast<int64_t>(plan.rank_tokens[p].size());
    for (int32_t t : plan.rank_tokens[p]) layout.is_token_in_rank[t * impl.size + p] = 1;
  }
  for (int32_t e : plan.expert) {
    if (e >= 0) ++layout.tokens_per_expert[e];
  }
  return layout;
}

}  // namespace moecomm
