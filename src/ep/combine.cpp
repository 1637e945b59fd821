// Combine and the backward passes, all reusing the layout a dispatch recorded in its handle.
#include <cstring>
#include <vector>

#include "kernels/cpu/rows.hpp"
#include "src/core/host_mirror.hpp"
#include "src/core/stopwatch.hpp"
#include "src/core/stream_copy.hpp"
#include "src/core/tensor_checks.hpp"
#include "src/ep/device_exchange.hpp"
#include "src/ep/dispatcher_state.hpp"
#include "src/ep/stream_output.hpp"

namespace moecomm {

namespace {

size_t rowBytes(const TensorView& v) {
  return static_cast<size_t>(v.shape[1]) * dtypeSize(v.dtype);
}

Status checkExpectedSizes(const Group::Impl& group, const Staging& staging,
                          const std::vector<int64_t>& counts, size_t per_token, WireOp op) {
  for (int p = 0; p < group.size; ++p) {
    const size_t expected = sizeof(WireHeader) + static_cast<size_t>(counts[p]) * per_token;
    if (staging.received[p] != expected) {
      return makeError(StatusCode::kInternalError,
                       "rank {}: {} message from rank {} has {} bytes, "
                       "expected {}",
                       group.rank, wireOpName(op), p, staging.received[p], expected);
    }
  }
  return Status::ok();
}

std::vector<int64_t> sendCounts(const DispatchHandle::Impl& h) {
  std::vector<int64_t> counts;
  for (const auto& tokens : h.send_tokens) counts.push_back(static_cast<int64_t>(tokens.size()));
  return counts;
}

// The checks shared by combine and dispatchBackward: rows [num_rows, H] f32|bf16, out [T, H] same.
Status checkReduceInputs(const Group::Impl& group, const DispatchHandle& handle,
                         const TensorView& rows, const TensorView& out, const char* rows_name,
                         const char* out_name) {
  MOECOMM_RETURN_IF_ERROR(checkHandle(handle, group));
  const DispatchHandle::Impl& h = *handle.impl();
  MOECOMM_RETURN_IF_ERROR(
      checkMatrix(rows_name, rows, h.num_rows, h.hidden, {DType::kF32, DType::kBF16}));
  return checkMatrix(out_name, out, h.tokens, h.hidden, {rows.dtype});
}

// Expert rows -> per-token sums on the receiving rank -> back to the source ranks -> summed per
// token over ranks. `weighted` applies the routing weight of each row (combine) or not
// (dispatchBackward).
// `prior`: a failure before the call (staging CUDA tensors), reported to the peers like bad input.
Status reduceToSources(Dispatcher::State& state, const TensorView& rows,
                       const DispatchHandle& handle, const TensorView& out, bool weighted,
                       WireOp op, const Status& prior) {
  Group::Impl& group = *state.group;
  Staging& staging = state.staging;
  const uint64_t sequence = group.takeSequence();
  staging.prepare(group.size);
  Stopwatch watch;
  DispatchTimes& times = state.times;
  times = {};
  Status local = prior.isOk()
                     ? checkReduceInputs(group, handle, rows, out, weighted ? "y" : "grad_rows",
                                         weighted ? "out" : "grad_x")
                     : prior;
  if (!local.isOk()) return exchange(group, staging, op, sequence, 0, local);

  const DispatchHandle::Impl& h = *handle.impl();
  const int k = h.topk;
  const int64_t hidden = h.hidden;
  const bool bf16 = rows.dtype == DType::kBF16;
  const size_t row_bytes = rowBytes(rows);
  std::vector<float> acc(static_cast<size_t>(hidden));
  const int me = group.rank;
  // Token-major: one row per received token already, so rows go back as they are, and this
  // rank's own rows are read where they are (its message to itself carries none).
  const std::byte* own_rows = nullptr;
  // Messages to peers whose windows this rank can write are built there directly.
  const SizeMatrix sizes = h.sizes(row_bytes, false);
  int64_t g = 0;
  for (int p = 0; p < group.size; ++p) {
    const bool in_place = h.token_major && p == me;
    const int64_t carried = in_place ? 0 : h.recv_tokens[p];
    std::byte* payload = placeInWindow(group, staging, sizes, p, op, sequence, h.recv_tokens[p]);
    if (payload == nullptr) {
      payload = staging.sendPayload(p, static_cast<size_t>(carried) * row_bytes, op, sequence,
                                    h.recv_tokens[p]);
    }
    if (h.token_major) {
      const std::byte* from = static_cast<const std::byte*>(rows.data) + g * row_bytes;
      if (in_place) {
        own_rows = from;
      } else if (carried > 0) {
        std::memcpy(payload, from, static_cast<size_t>(carried) * row_bytes);
      }
      g += h.recv_tokens[p];
      continue;
    }
    for (int64_t i = 0; i < h.recv_tokens[p]; ++i, ++g) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int j = 0; j < k; ++j) {
        const int64_t row = h.recv_rows[g * k + j];
        if (row < 0) continue;
        const float weight = weighted ? h.row_weights[row] : 1.0f;
        cpu::accumulateRow(acc.data(), static_cast<const std::byte*>(rows.data) + row * row_bytes,
                           bf16, weight, hidden);
      }
      cpu::storeRow(payload + i * row_bytes, bf16, acc.data(), hidden);
    }
  }
  // The rows each rank's message carries: a token-major rank's message to itself has none.
  std::vector<int64_t> counts = sendCounts(h);
  if (h.token_major) counts[me] = 0;
  for (int p = 0; p < group.size; ++p)
    staging.expect(p, static_cast<size_t>(counts[p]) * row_bytes);
  times.pack_ms = watch.lap();
  MOECOMM_RETURN_IF_ERROR(exchange(group, staging, op, sequence, 0, Status::ok(), &sizes));
  times.transfer_ms = watch.lap();
  MOECOMM_RETURN_IF_ERROR(checkExpectedSizes(group, staging, counts, row_bytes, op));

  // Sum over ranks in rank order (deterministic), in f32, one token at a time: its row's sum
  // stays in L1 and the output is written once, with no token-sized f32 buffer to clear, fill
  // and read back.
  const int n = group.size;
  std::vector<int64_t>& where = state.row_of_token;  // [T, ranks]: row in p's payload, or -1
  where.assign(static_cast<size_t>(h.tokens * n), -1);
  for (int p = 0; p < n; ++p) {
    for (size_t i = 0; i < h.send_tokens[p].size(); ++i) {
      where[static_cast<size_t>(h.send_tokens[p][i]) * n + p] = static_cast<int64_t>(i);
    }
  }
  // A large output is written through an L1 row with streaming stores (src/ep/stream_output.hpp).
  const bool stream = streamsOutput(static_cast<size_t>(h.tokens) * row_bytes);
  std::vector<std::byte> row(stream ? row_bytes : 0);
  for (int64_t t = 0; t < h.tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int p = 0; p < n; ++p) {
      const int64_t i = where[static_cast<size_t>(t) * n + p];
      if (i >= 0) {
        const std::byte* from = p == me && own_rows != nullptr ? own_rows : staging.recvPayload(p);
        cpu::accumulateRow(acc.data(), from + i * row_bytes, bf16, 1.0f, hidden);
      }
    }
    std::byte* dst = static_cast<std::byte*>(out.data) + t * row_bytes;
    if (stream) {
      cpu::storeRow(row.data(), bf16, acc.data(), hidden);
      streamCopy(dst, row.data(), row_bytes);
    } else {
      cpu::storeRow(dst, bf16, acc.data(), hidden);
    }
  }
  if (stream) streamFence();
  times.unpack_ms = watch.lap();
  return Status::ok();
}

Status checkCombineBackwardInputs(const Group::Impl& group, const DispatchHandle& handle,
                                  const TensorView& grad_out, const TensorView& y,
                                  const TensorView& grad_y, const TensorView& grad_weights) {
  MOECOMM_RETURN_IF_ERROR(checkHandle(handle, group));
  const DispatchHandle::Impl& h = *handle.impl();
  MOECOMM_RETURN_IF_ERROR(
      checkMatrix("grad_out", grad_out, h.tokens, h.hidden, {DType::kF32, DType::kBF16}));
  MOECOMM_RETURN_IF_ERROR(checkMatrix("y", y, h.num_rows, h.hidden, {grad_out.dtype}));
  MOECOMM_RETURN_IF_ERROR(checkMatrix("grad_y", grad_y, h.num_rows, h.hidden, {grad_out.dtype}));
  return checkMatrix("grad_weights", grad_weights, h.tokens, h.topk, {DType::kF32});
}

Status runCombineBackward(Dispatcher::State& state, const TensorView& grad_out, const TensorView& y,
                          const DispatchHandle& handle, const TensorView& grad_y,
                          const TensorView& grad_weights, const Status& prior) {
  Group::Impl& group = *state.group;
  Staging& staging = state.staging;
  const uint64_t sequence = group.takeSequence();
  staging.prepare(group.size);
  Status local = prior.isOk()
                     ? checkCombineBackwardInputs(group, handle, grad_out, y, grad_y, grad_weights)
                     : prior;
  if (!local.isOk())
    return exchange(group, staging, WireOp::kCombineBackwardGrad, sequence, 0, local);

  const DispatchHandle::Impl& h = *handle.impl();
  const int k = h.topk;
  const int64_t hidden = h.hidden;
  const bool bf16 = grad_out.dtype == DType::kBF16;
  const size_t row_bytes = rowBytes(grad_out);
  const std::vector<int64_t> counts = sendCounts(h);

  // Phase 1: grad_out travels like a dispatch (once per destination rank), built in the
  // receivers' windows where they are mapped here.
  const SizeMatrix grad_sizes = h.sizes(row_bytes, true);
  for (int p = 0; p < group.size; ++p) {
    std::byte* payload = placeInWindow(group, staging, grad_sizes, p, WireOp::kCombineBackwardGrad,
                                       sequence, counts[p]);
    if (payload == nullptr) {
      payload = staging.sendPayload(p, static_cast<size_t>(counts[p]) * row_bytes,
                                    WireOp::kCombineBackwardGrad, sequence, counts[p]);
    }
    for (size_t i = 0; i < h.send_tokens[p].size(); ++i) {
      std::memcpy(payload + i * row_bytes,
                  static_cast<const std::byte*>(grad_out.data) + h.send_tokens[p][i] * row_bytes,
                  row_bytes);
    }
    staging.expect(p, static_cast<size_t>(h.recv_tokens[p]) * row_bytes);
  }
  MOECOMM_RETURN_IF_ERROR(exchange(group, staging, WireOp::kCombineBackwardGrad, sequence, 0,
                                   Status::ok(), &grad_sizes));
  MOECOMM_RETURN_IF_ERROR(
      checkExpectedSizes(group, staging, h.recv_tokens, row_bytes, WireOp::kCombineBackwardGrad));

  // On the expert side: grad_y = weight * grad_out, and each slot's <grad_out, y>. Token-major:
  // grad_y is grad_out as received, and combine used no weights (their dots stay zero).
  std::vector<std::byte> grad_y_tmp(static_cast<size_t>(h.num_rows) * row_bytes, std::byte{0});
  std::vector<std::vector<float>> dots(static_cast<size_t>(group.size));
  int64_t g = 0;
  for (int p = 0; p < group.size; ++p) {
    const std::byte* incoming = staging.recvPayload(p);
    dots[p].assign(static_cast<size_t>(h.recv_tokens[p] * k), 0.0f);
    if (h.token_major) {
      const size_t bytes = static_cast<size_t>(h.recv_tokens[p]) * row_bytes;
      if (bytes > 0) std::memcpy(grad_y_tmp.data() + g * row_bytes, incoming, bytes);
      g += h.recv_tokens[p];
      continue;
    }
    for (int64_t i = 0; i < h.recv_tokens[p]; ++i, ++g) {
      const std::byte* g_row = incoming + i * row_bytes;
      for (int j = 0; j < k; ++j) {
        const int64_t row = h.recv_rows[g * k + j];
        if (row < 0) continue;
        cpu::scaleRow(grad_y_tmp.data() + row * row_bytes, g_row, bf16, h.row_weights[row], hidden);
        dots[p][i * k + j] = cpu::dotRows(
            g_row, static_cast<const std::byte*>(y.data) + row * row_bytes, bf16, hidden);
      }
    }
  }

  // Phase 2: the dot products go home.
  const size_t dot_bytes = static_cast<size_t>(k) * sizeof(float);
  for (int p = 0; p < group.size; ++p) {
    std::byte* payload =
        staging.sendPayload(p, dots[p].size() * sizeof(float), WireOp::kCombineBackwardDots,
                            sequence, h.recv_tokens[p]);
    if (!dots[p].empty()) std::memcpy(payload, dots[p].data(), dots[p].size() * sizeof(float));
    staging.expect(p, static_cast<size_t>(counts[p]) * dot_bytes);
  }
  const SizeMatrix dot_sizes = h.sizes(dot_bytes, false);
  MOECOMM_RETURN_IF_ERROR(exchange(group, staging, WireOp::kCombineBackwardDots, sequence, 1,
                                   Status::ok(), &dot_sizes));
  MOECOMM_RETURN_IF_ERROR(
      checkExpectedSizes(group, staging, counts, dot_bytes, WireOp::kCombineBackwardDots));

  std::vector<float> grad_w(static_cast<size_t>(h.tokens * k), 0.0f);
  for (int p = 0; p < group.size; ++p) {
    const auto* incoming = reinterpret_cast<const float*>(staging.recvPayload(p));
    for (size_t i = 0; i < h.send_tokens[p].size(); ++i) {
      const int64_t t = h.send_tokens[p][i];
      for (int j = 0; j < k; ++j) {
        if (h.slot_owner[t * k + j] == p) grad_w[t * k + j] = incoming[i * k + j];
      }
    }
  }
  // Both exchanges succeeded: only now touch the caller's outputs.
  if (!grad_y_tmp.empty()) std::memcpy(grad_y.data, grad_y_tmp.data(), grad_y_tmp.size());
  if (!grad_w.empty()) std::memcpy(grad_weights.data, grad_w.data(), grad_w.size() * sizeof(float));
  return Status::ok();
}

}  // namespace

void Dispatcher::combine(const TensorView& y, const DispatchHandle& handle, const TensorView& out,
                         ExecContext context) {
  if (isDeviceHandle(handle)) {
    Status status = deviceReduce(*state_, y, handle, out, true, context);
    if (!status.isOk()) state_->group->raise(status);
    return;
  }
  Status status =
      runMirrored<1, 1>(context, {&y}, {&out}, [&](auto& in, auto& outs, const Status& s) {
        return reduceToSources(*state_, in[0], handle, outs[0], true, WireOp::kCombine, s);
      });
  if (!status.isOk()) state_->group->raise(status);
}

Tensor Dispatcher::combine(const TensorView& y, const DispatchHandle& handle, ExecContext context) {
  Tensor out =
      Tensor::empty({handle.numTokens(), y.dim(1)},
                    y.dtype == DType::kBF16 ? DType::kBF16 : DType::kF32, y.device, context);
  combine(y, handle, out.view(), context);
  return out;
}

void Dispatcher::dispatchBackward(const TensorView& grad_rows, const DispatchHandle& handle,
                                  const TensorView& grad_x, ExecContext context) {
  if (isDeviceHandle(handle)) {
    Status status = deviceReduce(*state_, grad_rows, handle, grad_x, false, context);
    if (!status.isOk()) state_->group->raise(status);
    return;
  }
  Status status = runMirrored<1, 1>(context, {&grad_rows}, {&grad_x},
                                    [&](auto& in, auto& outs, const Status& s) {
                                      return reduceToSources(*state_, in[0], handle, outs[0], false,
                                                             WireOp::kDispatchBackward, s);
                                    });
  if (!status.isOk()) state_->group->raise(status);
}

void Dispatcher::combineBackward(const TensorView& grad_out, const TensorView& y,
                                 const DispatchHandle& handle, const TensorView& grad_y,
                                 const TensorView& grad_weights, ExecContext context) {
  if (isDeviceHandle(handle)) {
    Status status =
        deviceCombineBackward(*state_, grad_out, y, handle, grad_y, grad_weights, context);
    if (!status.isOk()) state_->group->raise(status);
    return;
  }
  Status status = runMirrored<2, 2>(context, {&grad_out, &y}, {&grad_y, &grad_weights},
                                    [&](auto& in, auto& outs, const Status& s) {
                                      return runCombineBackward(*state_, in[0], in[1], handle,
                                                                outs[0], outs[1], s);
                                    });
  if (!status.isOk()) state_->group->raise(status);
}

}  // namespace moecomm
