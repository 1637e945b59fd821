#include "src/ep/device_exchange.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "src/core/env.hpp"

#if defined(MOECOMM_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include <array>
#include <climits>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "kernels/cuda/backward.hpp"
#include "kernels/cuda/combine.hpp"
#include "kernels/cuda/copy.hpp"
#include "kernels/cuda/layout.hpp"
#include "kernels/cuda/unpack.hpp"
#include "moecomm/quant.hpp"
#include "src/core/device.hpp"
#include "src/core/tensor_checks.hpp"
#include "src/ep/batch_counts.hpp"
#include "src/ep/expert_layout.hpp"
#include "src/ep/handle_impl.hpp"
#endif

namespace moecomm {

#if defined(MOECOMM_HAVE_CUDA)

// What a GPU-native dispatch leaves for combine and the backward passes.
struct DeviceHandle {
  int device = 0;
  int ranks = 0;
  int topk = 0;
  int local_experts = 0;
  int64_t tokens = 0;
  int64_t hidden = 0;
  std::vector<int64_t> send_offsets;  // [ranks + 1] send-buffer rows per destination
  std::vector<int64_t> recv_offsets;  // [ranks + 1] received rows per source, in source order
  int64_t num_rows = 0;
  bool token_major = false;  // the batch has one row per received token (num_rows = received())
  Tensor send_pos;           // i32 [ranks, tokens]
  Tensor slot_row;           // i32 [rows in, topk]
  Tensor row_source;         // i32 [num_rows]
  Tensor row_weights;        // f32 [num_rows]
  Tensor expert_offsets;     // i32 [local experts + 1]
  // Sync-free between threads (static regions): i32 [2 x ranks], the rows really in each region,
  // on the GPU: sent to each destination, then received from each source. Empty for exact-size
  // dispatch and over nccl, where whole regions travel.
  Tensor real_rows;

  int64_t sent() const { return send_offsets.back(); }
  // real_rows' halves, or null where the rows travel whole (exact-size dispatch, nccl).
  const int32_t* rowsSentTo() const {
    return real_rows.defined() ? real_rows.as<int32_t>() : nullptr;
  }
  const int32_t* rowsReceivedFrom() const {
    return real_rows.defined() ? real_rows.as<int32_t>() + ranks : nullptr;
  }
  int64_t received() const { return recv_offsets.back(); }
};

// Device buffers a Dispatcher reuses across calls (they only grow) and the events its rounds
// publish. A buffer is reused only after the peers' copies out of it are ordered before the reuse
// on this rank's stream (the closing round of every call waits for them).
struct DeviceScratch {
  struct Buffer {
    std::shared_ptr<std::byte> memory;
    size_t capacity = 0;
    std::byte* data() const { return memory.get(); }
  };
  int device = -1;
  Buffer send_rows, send_experts, send_weights, recv_rows, recv_experts, recv_weights, partial,
      back, grad, small;
  Buffer send_scales, recv_scales;  // FP8 dispatch: each row's f32 scales, a second payload
  Buffer counts;  // sync-free dispatch: i32 device_counts (CountsLayout), widened at the end
  std::array<cudaEvent_t, 3> events{};  // per round: what this rank published is ready

  ~DeviceScratch();
};

namespace {

// Events go back to a process-wide pool instead of being destroyed: a peer may still be about to
// wait on this rank's last event after this rank has returned and dropped its Dispatcher, and a
// destroyed event must never reach cudaStreamWaitEvent. (A recycled event recorded again only
// makes such a late waiter wait for work that is already queued.)
struct EventPool {
  std::mutex mutex;
  std::map<int, std::vector<cudaEvent_t>> free;  // by device
};

EventPool& eventPool() {
  static auto* pool = new EventPool;  // never destroyed: events may outlive static destruction
  return *pool;
}

Status takeEvent(int device, cudaEvent_t* out) {
  {
    EventPool& pool = eventPool();
    std::lock_guard<std::mutex> lock(pool.mutex);
    auto& list = pool.free[device];
    if (!list.empty()) {
      *out = list.back();
      list.pop_back();
      return Status::ok();
    }
  }
  const cudaError_t status = cudaEventCreateWithFlags(out, cudaEventDisableTiming);
  if (status != cudaSuccess) {
    return makeError(StatusCode::kSystemError, "cudaEventCreate failed: {}",
                     cudaGetErrorString(status));
  }
  return Status::ok();
}

}  // namespace

DeviceScratch::~DeviceScratch() {
  EventPool& pool = eventPool();
  std::lock_guard<std::mutex> lock(pool.mutex);
  for (cudaEvent_t e : events) {
    if (e != nullptr) pool.free[device].push_back(e);
  }
}

namespace {

// The message of one host round: where this rank's data for the peer sits and the event that
// says it is there. Dispatch appends the per-expert counts of the peer's experts.
struct PeerMessage {
  uint64_t rows = 0;  // device pointer
  uint64_t experts = 0;
  uint64_t weights = 0;
  uint64_t event = 0;   // cudaEvent_t
  int64_t count = 0;    // rows
  uint64_t scales = 0;  // device pointer to the rows' FP8 scales (FP8 dispatch only)
  // Sync-free dispatch: device pointer to the i32 count of rows this rank really sent the peer
  // (count is then the size of the static region, the rows that travel).
  uint64_t sent_rows = 0;
  int64_t device = -1;  // the GPU the sender's buffers are on
};

using device::cudaStatus;

Status grow(DeviceScratch::Buffer& buffer, size_t bytes, int device) {
  if (buffer.capacity >= bytes && buffer.memory) return Status::ok();
  size_t capacity = 4096;
  while (capacity < bytes) capacity *= 2;
  buffer.memory.reset();
  MOECOMM_RETURN_IF_ERROR(device::allocate(device, capacity, &buffer.memory));
  buffer.capacity = capacity;
  return Status::ok();
}

Status scratchFor(Dispatcher::State& state, int device, DeviceScratch** out) {
  if (!state.device || state.device->device != device) {
    auto scratch = std::make_shared<DeviceScratch>();
    scratch->device = device;
    for (cudaEvent_t& e : scratch->events) MOECOMM_RETURN_IF_ERROR(takeEvent(device, &e));
    state.device = std::move(scratch);
  }
  *out = state.device.get();
  return Status::ok();
}

// A device tensor as a Status-returning call (Tensor::empty throws at the API edge).
// Ordered on `stream`: from the allocator in force (peers never read these).
Status deviceTensor(std::vector<int64_t> shape, DType dtype, int device, void* stream,
                    Tensor* out) {
  try {
    *out = Tensor::empty(shape, dtype, Device::cuda(device), ExecContext{stream});
  } catch (const Error& e) {
    return Status(e.code(), e.what());
  }
  return Status::ok();
}

cuda::RowType rowType(DType dtype) {
  return dtype == DType::kBF16 ? cuda::RowType::kBF16 : cuda::RowType::kF32;
}

size_t rowBytes(int64_t hidden, DType dtype) {
  return static_cast<size_t>(hidden) * dtypeSize(dtype);
}

Status checkOnDevice(const char* name, const TensorView& v, int device) {
  if (!v.device.isCuda() || v.device.index != device) {
    return makeError(StatusCode::kInvalidArgument,
                     "{} is {}, expected a tensor on cuda:{} like the dispatch's inputs", name,
                     v.describe(), device);
  }
  return Status::ok();
}

// One host round: every rank sends each peer `message(peer)` (fixed size) and gets the same
// from each. With a failed `local`, only the error travels.
template <typename Fill>
Status round(Dispatcher::State& state, WireOp op, uint64_t sequence, int phase, const Status& local,
             size_t bytes, Fill fill) {
  Group::Impl& group = *state.group;
  Staging& staging = state.staging;
  staging.prepare(group.size);
  for (int p = 0; p < group.size; ++p) {
    std::byte* payload = staging.sendPayload(p, bytes, op, sequence, 0);
    std::memset(payload, 0, bytes);
    if (local.isOk()) fill(p, payload);
    staging.expect(p, bytes);
  }
  MOECOMM_RETURN_IF_ERROR(exchange(group, staging, op, sequence, phase, local));
  for (int p = 0; p < group.size; ++p) {
    if (staging.received[p] != sizeof(WireHeader) + bytes) {
      return makeError(StatusCode::kInternalError,
                       "rank {}: the {} message from rank {} has {} bytes, expected {}", group.rank,
                       wireOpName(op), p, staging.received[p], sizeof(WireHeader) + bytes);
    }
  }
  return Status::ok();
}

PeerMessage messageFrom(const Staging& staging, int peer) {
  PeerMessage m;
  std::memcpy(&m, staging.recvPayload(peer), sizeof(m));
  return m;
}

// The closing round: each rank says "I have queued everything that reads your buffers" with the
// event after its last read, and every rank orders its stream after all of them, so that its
// buffers may be reused by its next call.
Status closingRound(Dispatcher::State& state, WireOp op, uint64_t sequence, int phase,
                    const Status& local, cudaEvent_t done, cudaStream_t stream) {
  MOECOMM_RETURN_IF_ERROR(
      round(state, op, sequence, phase, local, sizeof(PeerMessage), [&](int, std::byte* payload) {
        PeerMessage m;
        m.event = reinterpret_cast<uint64_t>(done);
        std::memcpy(payload, &m, sizeof(m));
      }));
  for (int p = 0; p < state.group->size; ++p) {
    const PeerMessage m = messageFrom(state.staging, p);
    MOECOMM_RETURN_IF_ERROR(
        cudaStatus(cudaStreamWaitEvent(stream, reinterpret_cast<cudaEvent_t>(m.event), 0),
                   "cudaStreamWaitEvent"));
  }
  return Status::ok();
}

// Over a device transport (NCCL): to every peer p the rows [out_offsets[p], out_offsets[p + 1])
// of `out`, and from it the rows [in_offsets[p], in_offsets[p + 1]) of `in`; rows are `unit`
// bytes.
Status moveOverDeviceTransport(const Group::Impl& group, const std::byte* out,
                               const std::vector<int64_t>& out_offsets, std::byte* in,
                               const std::vector<int64_t>& in_offsets, size_t unit,
                               cudaStream_t stream) {
  const int n = group.size;
  std::vector<const void*> send(static_cast<size_t>(n));
  std::vector<void*> recv(static_cast<size_t>(n));
  std::vector<size_t> send_bytes(static_cast<size_t>(n)), recv_bytes(static_cast<size_t>(n));
  for (int p = 0; p < n; ++p) {
    send[p] = out + out_offsets[p] * unit;
    send_bytes[p] = static_cast<size_t>(out_offsets[p + 1] - out_offsets[p]) * unit;
    recv[p] = in + in_offsets[p] * unit;
    recv_bytes[p] = static_cast<size_t>(in_offsets[p + 1] - in_offsets[p]) * unit;
  }
  return group.device_transport->allToAllV(send, send_bytes, recv, recv_bytes, stream,
                                           group.deadline());
}

// Static regions between ranks on one GPU: the kernel copies only the real rows of a region, whose
// count is on the GPU (real_rows[p], not read back). Rows of a peer on another GPU travel whole,
// because a kernel may not read another GPU's memory without peer access, which moecomm leaves to
// the application.
bool countedCopyApplies(const int32_t* real_rows, const PeerMessage& m, int device) {
  return real_rows != nullptr && m.device == device;
}

// Between threads, after a round whose messages say where each peer's rows for this rank sit:
// waits on each peer's event and copies its rows to dst + offsets[p] rows of `unit` bytes (with
// real_rows, a sync-free call's counts on the GPU, only the rows really in each region).
Status pullFromPeers(const Dispatcher::State& state, const std::vector<int64_t>& offsets,
                     size_t unit, std::byte* dst, const int32_t* real_rows, int device,
                     cudaStream_t stream) {
  Status status;
  for (int p = 0; p < state.group->size && status.isOk(); ++p) {
    const PeerMessage m = messageFrom(state.staging, p);
    const int64_t expected = offsets[p + 1] - offsets[p];
    if (m.count != expected) {
      return makeError(StatusCode::kInternalError, "rank {}: rank {} offers {} rows, expected {}",
                       state.group->rank, p, m.count, expected);
    }
    if (m.count == 0) continue;
    status = cudaStatus(cudaStreamWaitEvent(stream, reinterpret_cast<cudaEvent_t>(m.event), 0),
                        "cudaStreamWaitEvent");
    if (status.isOk() && countedCopyApplies(real_rows, m, device)) {
      const cuda::CountedRows part{dst + offsets[p] * unit, reinterpret_cast<const void*>(m.rows),
                                   static_cast<int64_t>(unit)};
      status = cudaStatus(cuda::copyCountedRows(&part, 1, real_rows + p, m.count, stream),
                          "the counted copy");
    } else if (status.isOk()) {
      status = cudaStatus(
          cudaMemcpyAsync(dst + offsets[p] * unit, reinterpret_cast<const void*>(m.rows),
                          static_cast<size_t>(m.count) * unit, cudaMemcpyDefault, stream),
          "cudaMemcpyAsync");
    }
  }
  return status;
}

// Over NCCL a rank that fails after the peers have posted their transfers would leave them
// waiting on the GPU, so every step that can fail runs before this round, which tells each rank
// whether all are ready.
Status readyRound(Dispatcher::State& state, WireOp op, uint64_t sequence, int phase,
                  const Status& local) {
  return round(state, op, sequence, phase, local, sizeof(PeerMessage), [](int, std::byte*) {});
}

Status checkDispatchInputs(const Group::Impl& group, const TensorView& x, const TensorView* scales,
                           const TensorView& idx, const TensorView& w) {
  const GroupConfig& c = group.config;
  MOECOMM_RETURN_IF_ERROR(checkMatrix("x", x, -1, c.hidden, {c.dtype}, true));
  if ((scales != nullptr) != (c.dtype == DType::kFP8E4M3)) {
    return makeError(StatusCode::kInvalidArgument,
                     "x_scales go with fp8e4m3 groups, and fp8e4m3 groups need them; this group's "
                     "dtype is {}",
                     dtypeName(c.dtype));
  }
  if (scales != nullptr) {
    MOECOMM_RETURN_IF_ERROR(checkMatrix("x_scales", *scales, x.shape[0], fp8ScaleBlocks(c.hidden),
                                        {DType::kF32}, true));
    MOECOMM_RETURN_IF_ERROR(checkOnDevice("x_scales", *scales, x.device.index));
  }
  MOECOMM_RETURN_IF_ERROR(checkMatrix("topk_idx", idx, x.shape[0], c.topk, {DType::kI32}, true));
  MOECOMM_RETURN_IF_ERROR(checkMatrix("topk_weights", w, x.shape[0], c.topk, {DType::kF32}, true));
  MOECOMM_RETURN_IF_ERROR(checkOnDevice("topk_idx", idx, x.device.index));
  MOECOMM_RETURN_IF_ERROR(checkOnDevice("topk_weights", w, x.device.index));
  if (group.device_transport != nullptr && group.device_transport->device() != x.device.index) {
    return makeError(StatusCode::kInvalidArgument,
                     "x is on cuda:{} but this rank's NCCL communicator is on cuda:{}; pass "
                     "tensors on the GPU that was current when the group was created",
                     x.device.index, group.device_transport->device());
  }
  if (x.shape[0] * group.size >= INT32_MAX || x.shape[0] * c.topk >= INT32_MAX) {
    return makeError(StatusCode::kInvalidArgument,
                     "x has {} tokens; the GPU path indexes tokens x ranks in 32 bits", x.shape[0]);
  }
  return Status::ok();
}

// The send buffer of h.send_offsets rows (static regions: rows no token fills are marked with -1
// experts first), then the event peers wait on.
Status pack(DeviceScratch& sc, const TensorView& x, const TensorView* scales, const TensorView& idx,
            const TensorView& w, cudaStream_t stream, const DeviceHandle& h, int n, int E,
            size_t rb, bool static_regions) {
  const int64_t T = h.tokens;
  const size_t sent = static_cast<size_t>(h.sent());
  MOECOMM_RETURN_IF_ERROR(grow(sc.send_rows, sent * rb, h.device));
  MOECOMM_RETURN_IF_ERROR(grow(sc.send_experts, sent * h.topk * 4, h.device));
  MOECOMM_RETURN_IF_ERROR(grow(sc.send_weights, sent * h.topk * 4 + 4, h.device));
  if (static_regions && sent > 0) {  // -1 is all bits set
    MOECOMM_RETURN_IF_ERROR(
        cudaStatus(cudaMemsetAsync(sc.send_experts.data(), 0xff, sent * h.topk * 4, stream),
                   "cudaMemsetAsync"));
  }
  MOECOMM_RETURN_IF_ERROR(
      cudaStatus(cuda::packRows(x.data, T, static_cast<int64_t>(rb), n, h.send_pos.as<int32_t>(),
                                sc.send_rows.data(), stream),
                 "pack"));
  if (scales != nullptr) {  // the same placement for the scales, a row of their own per token
    const auto sb = static_cast<int64_t>(scales->shape[1] * sizeof(float));
    MOECOMM_RETURN_IF_ERROR(grow(sc.send_scales, sent * static_cast<size_t>(sb), h.device));
    MOECOMM_RETURN_IF_ERROR(
        cudaStatus(cuda::packRows(scales->data, T, sb, n, h.send_pos.as<int32_t>(),
                                  sc.send_scales.data(), stream),
                   "pack scales"));
  }
  MOECOMM_RETURN_IF_ERROR(cudaStatus(
      cuda::packRouting(idx.as<const int32_t>(), w.as<const float>(), T, h.topk, E, n,
                        h.send_pos.as<int32_t>(),
                        reinterpret_cast<int32_t*>(sc.send_experts.data()),
                        reinterpret_cast<float*>(sc.send_weights.data()), nullptr, stream),
      "pack routing"));
  return cudaStatus(cudaEventRecord(sc.events[0], stream), "cudaEventRecord");
}

// The layout's small outputs in DeviceScratch::small, side by side: per expert (E), per rank
// (n), rank offsets (n + 1), two error slots, then the [T, n] flags as bytes.
int32_t* tokensPerRank(const DeviceScratch& sc, int experts) {
  return reinterpret_cast<int32_t*>(sc.small.data()) + experts;
}

// The source side of dispatch: layout (one wait for the counts), then the send buffer. With
// `deferred_errors` (sync-free dispatch) there is no wait: every destination gets a static region
// of T rows (rows past its count are marked -1 for every expert and carry nothing), and the two
// error slots are written there for collectCounts instead of being read back.
Status layoutAndPack(Dispatcher::State& state, DeviceScratch& sc, const TensorView& x,
                     const TensorView* scales, const TensorView& idx, const TensorView& w,
                     cudaStream_t stream, DeviceHandle& h, std::vector<int32_t>* tokens_per_expert,
                     int32_t* deferred_errors) {
  const Group::Impl& group = *state.group;
  const int n = group.size;
  const int E = group.config.num_experts;
  const int64_t T = h.tokens;
  const size_t rb = rowBytes(h.hidden, group.config.dtype);
  MOECOMM_RETURN_IF_ERROR(deviceTensor({n, T}, DType::kI32, h.device, stream, &h.send_pos));
  const size_t small_ints = static_cast<size_t>(E + n + (n + 1) + 2);
  MOECOMM_RETURN_IF_ERROR(grow(sc.small, small_ints * 4 + static_cast<size_t>(T * n), h.device));
  auto* ints = reinterpret_cast<int32_t*>(sc.small.data());
  int32_t* tpe = ints;
  int32_t* tpr = tokensPerRank(sc, E);
  int32_t* offsets = tpr + n;
  int32_t* errors = offsets + n + 1;
  auto* in_rank = reinterpret_cast<uint8_t*>(errors + 2);
  const bool sync_free = deferred_errors != nullptr;
  if (sync_free) errors = deferred_errors;
  MOECOMM_RETURN_IF_ERROR(
      cudaStatus(cuda::fillInt32(errors, 2, INT32_MAX, stream), "the layout's error slots"));
  cuda::LayoutOutputs lo{tpe, tpr, offsets, h.send_pos.as<int32_t>(), in_rank, errors};
  lo.repeated_slot = errors + 1;
  lo.static_regions = sync_free;
  MOECOMM_RETURN_IF_ERROR(cudaStatus(
      cuda::computeLayout(idx.as<const int32_t>(), T, h.topk, E, n, lo, stream), "the layout"));
  if (sync_free) {
    h.send_offsets.resize(static_cast<size_t>(n + 1));
    for (int d = 0; d <= n; ++d) h.send_offsets[d] = d * T;
    return pack(sc, x, scales, idx, w, stream, h, n, E, rb, true);
  }
  // The one wait of the call: the counts size every buffer that follows.
  std::vector<int32_t> host(small_ints);
  MOECOMM_RETURN_IF_ERROR(
      cudaStatus(cudaMemcpyAsync(host.data(), ints, small_ints * 4, cudaMemcpyDeviceToHost, stream),
                 "cudaMemcpyAsync"));
  MOECOMM_RETURN_IF_ERROR(cudaStatus(cudaStreamSynchronize(stream), "cudaStreamSynchronize"));
  const int32_t bad = host[static_cast<size_t>(E + n + n + 1)];
  const int32_t repeated = host[static_cast<size_t>(E + n + n + 2)];
  if (bad != INT32_MAX) {
    return makeError(StatusCode::kInvalidArgument,
                     "topk_idx[{}, {}] names no expert: ids must be -1 or in [0, {})", bad / h.topk,
                     bad % h.topk, E);
  }
  if (repeated != INT32_MAX) {
    return makeError(StatusCode::kInvalidArgument,
                     "topk_idx[{}, {}] repeats an expert token {} already names; each token "
                     "names an expert at most once",
                     repeated / h.topk, repeated % h.topk, repeated / h.topk);
  }
  tokens_per_expert->assign(host.begin(), host.begin() + E);
  h.send_offsets.assign(host.begin() + E + n, host.begin() + E + n + n + 1);
  return pack(sc, x, scales, idx, w, stream, h, n, E, rb, false);
}

}  // namespace

bool deviceExchangeApplies(const Group::Impl& group, const TensorView& x,
                           const TensorView& topk_idx, const TensorView& topk_weights,
                           const TensorView* x_scales) {
  // Host tensors, the common case, are told apart before anything costlier.
  if (!x.device.isCuda() || !topk_idx.device.isCuda() || !topk_weights.device.isCuda() ||
      topk_idx.dtype != DType::kI32) {
    return false;
  }
  // FP8 rows travel with their scales; without them the host engine says what is missing.
  if ((group.config.dtype == DType::kFP8E4M3) != (x_scales != nullptr)) return false;
  if (x_scales != nullptr && !x_scales->device.isCuda()) return false;
  const bool device_capable =
      group.device_transport != nullptr || std::string(group.transport->name()) == "local";
  return device_capable && envInt("MOECOMM_CUDA_NATIVE", 1) != 0;
}

bool isDeviceHandle(const DispatchHandle& handle) {
  return handle.valid() && handle.impl()->device != nullptr;
}

Status deviceDispatch(Dispatcher::State& state, const TensorView& x, const TensorView* x_scales,
                      const TensorView& topk_idx, const TensorView& topk_weights,
                      ExecContext context, ExpertBatch* out) {
  Group::Impl& group = *state.group;
  const uint64_t sequence = group.takeSequence();
  state.times = {};
  const int n = group.size;
  const int k = group.config.topk;
  const int L = group.config.num_experts / n;
  auto stream = static_cast<cudaStream_t>(context.stream);
  auto h = std::make_shared<DeviceHandle>();
  h->device = x.device.index;
  h->ranks = n;
  h->topk = k;
  h->local_experts = L;
  h->tokens = x.shape[0];
  h->hidden = group.config.hidden;
  const size_t rb = rowBytes(h->hidden, group.config.dtype);
  const int64_t blocks = x_scales != nullptr ? fp8ScaleBlocks(h->hidden) : 0;
  const size_t sb = static_cast<size_t>(blocks) * sizeof(float);  // a row's scales
  DeviceScratch* sc = nullptr;
  std::vector<int32_t> tpe;
  // Sync-free: the counts gather in sc->counts (i32, CountsLayout) and are widened into the
  // batch's device_counts at the end; nothing comes back to the host.
  const bool sync_free = state.options.sync_free;
  const bool over_nccl = group.device_transport != nullptr;
  const CountsLayout at{L, n};
  int32_t* counts = nullptr;
  Status local = checkDispatchOptions(state.options);
  if (local.isOk()) local = checkDispatchInputs(group, x, x_scales, topk_idx, topk_weights);
  if (local.isOk()) local = device::requireDevice(h->device);  // says "no GPU is usable"
  if (local.isOk()) local = device::setDevice(h->device);
  if (local.isOk()) local = scratchFor(state, h->device, &sc);
  if (local.isOk() && sync_free) {
    local = grow(sc->counts, static_cast<size_t>(at.size()) * 4, h->device);
    if (local.isOk()) counts = reinterpret_cast<int32_t*>(sc->counts.data());
  }
  if (local.isOk()) {
    local = layoutAndPack(state, *sc, x, x_scales, topk_idx, topk_weights, stream, *h, &tpe,
                          sync_free ? counts + at.badSlot() : nullptr);
  }
  // Sync-free: the handle keeps how many rows each static region really holds, for the counted
  // copies of this call and of combine and the backward passes (the scratch's counts belong to
  // whichever dispatch ran last). NCCL moves whole regions, so it needs none.
  if (local.isOk() && sync_free && !over_nccl) {
    local = deviceTensor({2 * n}, DType::kI32, h->device, stream, &h->real_rows);
    if (local.isOk()) {
      local =
          cudaStatus(cudaMemcpyAsync(h->real_rows.data(), tokensPerRank(*sc, n * L),
                                     static_cast<size_t>(n) * 4, cudaMemcpyDeviceToDevice, stream),
                     "cudaMemcpyAsync");
    }
  }

  // Round 1: to each destination, where its rows sit, the event after the pack, and how many
  // rows each of its experts gets from this rank (sync-free: none; the receiver counts them).
  const size_t message_bytes = sizeof(PeerMessage) + static_cast<size_t>(L) * sizeof(int64_t);
  MOECOMM_RETURN_IF_ERROR(
      round(state, WireOp::kDeviceDispatch, sequence, 0, local, message_bytes,
            [&](int d, std::byte* payload) {
              PeerMessage m;
              const int64_t first = h->send_offsets[d];
              m.rows = reinterpret_cast<uint64_t>(sc->send_rows.data() + first * rb);
              m.experts = reinterpret_cast<uint64_t>(sc->send_experts.data() + first * k * 4);
              m.weights = reinterpret_cast<uint64_t>(sc->send_weights.data() + first * k * 4);
              m.event = reinterpret_cast<uint64_t>(sc->events[0]);
              m.count = h->send_offsets[d + 1] - first;
              if (sb > 0)
                m.scales = reinterpret_cast<uint64_t>(sc->send_scales.data() + first * sb);
              if (sync_free) {
                m.sent_rows = reinterpret_cast<uint64_t>(tokensPerRank(*sc, n * L) + d);
              }
              m.device = h->device;
              std::memcpy(payload, &m, sizeof(m));
              for (int e = 0; e < L && !sync_free; ++e) {
                const int64_t c = tpe[static_cast<size_t>(d * L + e)];
                std::memcpy(payload + sizeof(m) + e * sizeof(int64_t), &c, sizeof(c));
              }
            }));

  // The receiving side's layout, on the host from the counts (the same formula planUnpack uses).
  const DispatchOptions& o = state.options;
  std::vector<PeerMessage> from(static_cast<size_t>(n));
  std::vector<int64_t> demand(static_cast<size_t>(L), 0);
  h->recv_offsets.assign(1, 0);
  for (int s = 0; s < n; ++s) {
    from[s] = messageFrom(state.staging, s);
    h->recv_offsets.push_back(h->recv_offsets.back() + from[s].count);
    for (int e = 0; e < L; ++e) {
      int64_t c = 0;
      std::memcpy(&c, state.staging.recvPayload(s) + sizeof(PeerMessage) + e * sizeof(int64_t),
                  sizeof(c));
      demand[e] += c;
    }
  }
  // Token-major: the received rows are the batch, in source order, and the plan (alignment 1)
  // only says which slots capacity keeps.
  ExpertBatch batch;
  const int64_t plan_rows = layoutExperts(o, demand, &batch);
  for (int s = 0; s < n; ++s) batch.tokens_from_rank.push_back(from[s].count);
  const int64_t rows_in = h->received();
  h->token_major = o.layout == BatchLayout::kTokenMajor;
  h->num_rows = h->token_major ? rows_in : plan_rows;
  if (h->token_major) batch.expert_offsets.clear();

  // Pull every source's rows, then lay them out expert by expert (token-major: straight into
  // the batch).
  Status mid = deviceTensor({rows_in, k}, DType::kI32, h->device, stream, &h->slot_row);
  if (mid.isOk()) mid = deviceTensor({plan_rows}, DType::kI32, h->device, stream, &h->row_source);
  if (mid.isOk() && !h->token_major)
    mid = deviceTensor({h->num_rows}, DType::kF32, h->device, stream, &h->row_weights);
  if (mid.isOk()) mid = deviceTensor({L + 1}, DType::kI32, h->device, stream, &h->expert_offsets);
  if (mid.isOk()) {
    mid = deviceTensor({h->num_rows, h->hidden}, group.config.dtype, h->device, stream, &batch.x);
  }
  if (mid.isOk() && h->token_major) {
    mid = deviceTensor({rows_in, k}, DType::kI32, h->device, stream, &batch.topk_idx);
    if (mid.isOk())
      mid = deviceTensor({rows_in, k}, DType::kF32, h->device, stream, &batch.topk_weights);
  }
  if (mid.isOk() && !h->token_major)
    mid = grow(sc->recv_rows, static_cast<size_t>(rows_in) * rb, h->device);
  if (mid.isOk()) mid = grow(sc->recv_experts, static_cast<size_t>(rows_in * k) * 4, h->device);
  if (mid.isOk()) mid = grow(sc->recv_weights, static_cast<size_t>(rows_in * k) * 4, h->device);
  if (mid.isOk()) mid = grow(sc->partial, static_cast<size_t>(2 * L + 2) * 4, h->device);
  if (mid.isOk() && sync_free) {
    mid = deviceTensor({at.size()}, DType::kI64, h->device, stream, &batch.device_counts);
  }
  if (mid.isOk() && sync_free) {  // sources with no tokens send no count
    mid =
        cudaStatus(cudaMemsetAsync(counts + at.fromRank(0), 0, static_cast<size_t>(n) * 4, stream),
                   "cudaMemsetAsync");
  }
  if (mid.isOk() && sb > 0) {
    mid = deviceTensor({h->num_rows, blocks}, DType::kF32, h->device, stream, &batch.x_scales);
    if (mid.isOk() && !h->token_major)
      mid = grow(sc->recv_scales, static_cast<size_t>(rows_in) * sb, h->device);
  }
  std::byte* rows_to =
      h->token_major ? static_cast<std::byte*>(batch.x.data()) : sc->recv_rows.data();
  std::byte* scales_to = sb == 0 ? nullptr
                                 : (h->token_major ? static_cast<std::byte*>(batch.x_scales.data())
                                                   : sc->recv_scales.data());
  if (over_nccl) {
    MOECOMM_RETURN_IF_ERROR(readyRound(state, WireOp::kDeviceDispatch, sequence, 1, mid));
    const std::vector<int64_t>& so = h->send_offsets;
    const std::vector<int64_t>& ro = h->recv_offsets;
    mid = moveOverDeviceTransport(group, sc->send_rows.data(), so, rows_to, ro, rb, stream);
    if (mid.isOk()) {
      mid = moveOverDeviceTransport(group, sc->send_experts.data(), so, sc->recv_experts.data(), ro,
                                    static_cast<size_t>(k) * 4, stream);
    }
    if (mid.isOk()) {
      mid = moveOverDeviceTransport(group, sc->send_weights.data(), so, sc->recv_weights.data(), ro,
                                    static_cast<size_t>(k) * 4, stream);
    }
    if (mid.isOk() && sb > 0) {
      mid = moveOverDeviceTransport(group, sc->send_scales.data(), so, scales_to, ro, sb, stream);
    }
    if (mid.isOk() && sync_free) {  // each source's real row count, one i32 per pair
      std::vector<int64_t> one(static_cast<size_t>(n + 1));
      for (int p = 0; p <= n; ++p) one[p] = p;
      mid = moveOverDeviceTransport(
          group, reinterpret_cast<const std::byte*>(tokensPerRank(*sc, n * L)), one,
          reinterpret_cast<std::byte*>(counts + at.fromRank(0)), one, 4, stream);
    }
  }
  for (int s = 0; s < n && mid.isOk() && !over_nccl; ++s) {
    const int64_t first = h->recv_offsets[s];
    const int64_t count = from[s].count;
    if (count == 0) continue;
    mid = cudaStatus(cudaStreamWaitEvent(stream, reinterpret_cast<cudaEvent_t>(from[s].event), 0),
                     "cudaStreamWaitEvent");
    // Each buffer of the source's region: bytes a row, where it goes, where it is, and whether
    // a counted copy may stop at the real rows. The experts always travel whole, because their
    // -1s past the count are what tells planUnpack that those rows hold nothing.
    struct Copy {
      size_t unit;
      std::byte* to;
      uint64_t from;
      bool countable;
    };
    const std::array<Copy, 4> copies = {{
        {rb, rows_to, from[s].rows, true},
        {static_cast<size_t>(k) * 4, sc->recv_experts.data(), from[s].experts, false},
        {static_cast<size_t>(k) * 4, sc->recv_weights.data(), from[s].weights, true},
        {sb, scales_to, from[s].scales, true},  // none (0 bytes) unless FP8
    }};
    if (mid.isOk() && sync_free) {
      mid = cudaStatus(
          cudaMemcpyAsync(counts + at.fromRank(s), reinterpret_cast<const void*>(from[s].sent_rows),
                          4, cudaMemcpyDefault, stream),
          "cudaMemcpyAsync");
    }
    // Static regions on this GPU: the countable buffers move only as far as the count just
    // copied, in one launch.
    const bool counted = countedCopyApplies(h->rowsReceivedFrom(), from[s], h->device);
    if (mid.isOk() && counted) {
      std::array<cuda::CountedRows, 3> parts{};
      int used = 0;
      for (const Copy& c : copies) {
        if (c.unit == 0 || !c.countable) continue;
        parts[used++] = {c.to + first * c.unit, reinterpret_cast<const void*>(c.from),
                         static_cast<int64_t>(c.unit)};
      }
      mid = cudaStatus(
          cuda::copyCountedRows(parts.data(), used, counts + at.fromRank(s), count, stream),
          "the counted copy");
    }
    for (const Copy& c : copies) {
      if (!mid.isOk()) break;
      if (c.unit == 0 || (counted && c.countable)) continue;
      mid = cudaStatus(
          cudaMemcpyAsync(c.to + first * c.unit, reinterpret_cast<const void*>(c.from),
                          static_cast<size_t>(count) * c.unit, cudaMemcpyDefault, stream),
          "cudaMemcpyAsync");
    }
  }
  if (mid.isOk() && sync_free && !over_nccl) {
    mid = cudaStatus(cudaMemcpyAsync(h->real_rows.as<int32_t>() + n, counts + at.fromRank(0),
                                     static_cast<size_t>(n) * 4, cudaMemcpyDeviceToDevice, stream),
                     "cudaMemcpyAsync");
  }
  if (mid.isOk()) {
    auto* table = reinterpret_cast<int32_t*>(sc->partial.data());
    cuda::UnpackOptions uo;
    uo.local_experts = L;
    uo.alignment = o.expert_alignment;
    uo.capacity = o.expert_capacity;
    uo.pad_to_capacity = o.pad_to_capacity;
    uo.max_rows = plan_rows;
    cuda::UnpackPlan plan{table,
                          table + L,
                          h->expert_offsets.as<int32_t>(),
                          h->slot_row.as<int32_t>(),
                          h->row_source.as<int32_t>(),
                          table + 2 * L,
                          table + 2 * L + 1};
    if (sync_free) {  // straight into the counts
      plan.expert_demand = counts + at.demand(0);
      plan.expert_counts = counts + at.kept(0);
      plan.refused = counts + at.refused();
    }
    mid = cudaStatus(cuda::planUnpack(reinterpret_cast<const int32_t*>(sc->recv_experts.data()),
                                      rows_in, k, uo, plan, stream),
                     "the unpack plan");
    if (mid.isOk() && h->token_major) {
      mid = cudaStatus(
          cuda::keptRouting(reinterpret_cast<const int32_t*>(sc->recv_experts.data()),
                            reinterpret_cast<const float*>(sc->recv_weights.data()),
                            h->slot_row.as<int32_t>(), rows_in * k, batch.topk_idx.as<int32_t>(),
                            batch.topk_weights.as<float>(), stream),
          "the token-major routing");
    }
    if (mid.isOk() && !h->token_major) {
      mid = cudaStatus(
          cuda::unpackRows(sc->recv_rows.data(), reinterpret_cast<float*>(sc->recv_weights.data()),
                           k, static_cast<int64_t>(rb), plan, L, h->num_rows, batch.x.data(),
                           h->row_weights.as<float>(), stream),
          "unpack");
    }
    if (mid.isOk() && sb > 0 && !h->token_major) {  // the same plan places each row's scales
      mid =
          cudaStatus(cuda::unpackRows(sc->recv_scales.data(), nullptr, k, static_cast<int64_t>(sb),
                                      plan, L, h->num_rows, batch.x_scales.data(), nullptr, stream),
                     "unpack scales");
    }
    if (mid.isOk() && sync_free) {
      mid = cudaStatus(
          cuda::widenCounts(counts, at.size(), batch.device_counts.as<int64_t>(), stream),
          "the counts");
    }
  }
  if (over_nccl) {
    MOECOMM_RETURN_IF_ERROR(mid);  // NCCL orders reuse of the buffers on the stream by itself
  } else {
    if (mid.isOk()) mid = cudaStatus(cudaEventRecord(sc->events[1], stream), "cudaEventRecord");
    MOECOMM_RETURN_IF_ERROR(
        closingRound(state, WireOp::kDeviceDispatch, sequence, 1, mid, sc->events[1], stream));
  }

  batch.row_weights = h->row_weights;
  if (sync_free) clearHostCounts(batch);  // the host has none of the counts until collectCounts
  auto impl = std::make_shared<DispatchHandle::Impl>();
  impl->group = &group;
  impl->ranks = n;
  impl->topk = k;
  impl->hidden = h->hidden;
  impl->tokens = h->tokens;
  impl->num_rows = h->num_rows;
  impl->token_major = h->token_major;
  impl->device = h;
  batch.handle = DispatchHandle(impl);
  *out = std::move(batch);
  return Status::ok();
}

namespace {

Status checkDeviceHandle(const DispatchHandle& handle, const Group::Impl& group) {
  MOECOMM_RETURN_IF_ERROR(checkHandle(handle, group));
  if (!isDeviceHandle(handle)) {
    return makeError(StatusCode::kInternalError, "a host handle reached the GPU-native path");
  }
  return Status::ok();
}

// Expert-side rows (`source`, one per received row in source order) come back to their sources:
// round 1 publishes where each source's rows sit; each source pulls its rows into `back`
// (send-buffer order) and runs `finish` on them.
template <typename Finish>
Status rowsHome(Dispatcher::State& state, WireOp op, uint64_t sequence, Status local,
                const DeviceHandle* h, const std::byte* source, size_t unit, DeviceScratch* sc,
                cudaStream_t stream, Finish finish) {
  if (local.isOk()) local = grow(sc->back, static_cast<size_t>(h->sent()) * unit, h->device);
  MOECOMM_RETURN_IF_ERROR(
      round(state, op, sequence, 2, local, sizeof(PeerMessage), [&](int s, std::byte* payload) {
        PeerMessage m;
        m.rows = reinterpret_cast<uint64_t>(source + h->recv_offsets[s] * unit);
        m.event = reinterpret_cast<uint64_t>(sc->events[1]);
        m.count = h->recv_offsets[s + 1] - h->recv_offsets[s];
        m.device = h->device;
        std::memcpy(payload, &m, sizeof(m));
      }));
  const Group::Impl& group = *state.group;
  if (group.device_transport != nullptr) {
    Status moved = moveOverDeviceTransport(group, source, h->recv_offsets, sc->back.data(),
                                           h->send_offsets, unit, stream);
    if (moved.isOk()) moved = finish();
    return moved;
  }
  Status mid = pullFromPeers(state, h->send_offsets, unit, sc->back.data(), h->rowsSentTo(),
                             h->device, stream);
  if (mid.isOk()) mid = finish();
  if (mid.isOk()) mid = cudaStatus(cudaEventRecord(sc->events[2], stream), "cudaEventRecord");
  return closingRound(state, op, sequence, 3, mid, sc->events[2], stream);
}

}  // namespace

Status deviceReduce(Dispatcher::State& state, const TensorView& rows, const DispatchHandle& handle,
                    const TensorView& out, bool weighted, ExecContext context) {
  Group::Impl& group = *state.group;
  const uint64_t sequence = group.takeSequence();
  state.times = {};
  const WireOp op = weighted ? WireOp::kDeviceCombine : WireOp::kDeviceDispatchBackward;
  auto stream = static_cast<cudaStream_t>(context.stream);
  Status local = checkDeviceHandle(handle, group);
  const DeviceHandle* h = local.isOk() ? handle.impl()->device.get() : nullptr;
  const char* rows_name = weighted ? "y" : "grad_rows";
  const char* out_name = weighted ? "out" : "grad_x";
  if (local.isOk()) {
    local = checkMatrix(rows_name, rows, h->num_rows, h->hidden, {DType::kF32, DType::kBF16}, true);
  }
  if (local.isOk()) local = checkMatrix(out_name, out, h->tokens, h->hidden, {rows.dtype}, true);
  if (local.isOk()) local = checkOnDevice(rows_name, rows, h->device);
  if (local.isOk()) local = checkOnDevice(out_name, out, h->device);
  DeviceScratch* sc = nullptr;
  if (local.isOk()) local = device::setDevice(h->device);
  if (local.isOk()) local = scratchFor(state, h->device, &sc);
  const size_t unit = local.isOk() ? rowBytes(h->hidden, rows.dtype) : 0;
  // The expert side: one partial row per received row, into the shared partial buffer.
  // Token-major: the rows are those partials already (combine's weights applied by the caller).
  const bool in_place = local.isOk() && h->token_major;
  if (local.isOk() && !in_place)
    local = grow(sc->partial, static_cast<size_t>(h->received()) * unit, h->device);
  if (local.isOk() && !in_place) {
    local = cudaStatus(cuda::combineExpertSide(rows.data, rowType(rows.dtype), h->hidden,
                                               h->received(), h->topk, h->slot_row.as<int32_t>(),
                                               weighted ? h->row_weights.as<float>() : nullptr,
                                               sc->partial.data(), stream),
                       "the expert-side reduction");
  }
  if (local.isOk()) local = cudaStatus(cudaEventRecord(sc->events[1], stream), "cudaEventRecord");
  const std::byte* source =
      in_place ? static_cast<const std::byte*>(rows.data) : sc->partial.data();
  return rowsHome(state, op, sequence, local, h, source, unit, sc, stream, [&] {
    return cudaStatus(
        cuda::combineReduce(sc->back.data(), rowType(rows.dtype), h->hidden, h->tokens, h->ranks,
                            h->send_pos.as<int32_t>(), out.data, stream),
        "the reduction over ranks");
  });
}

Status deviceCombineBackward(Dispatcher::State& state, const TensorView& grad_out,
                             const TensorView& y, const DispatchHandle& handle,
                             const TensorView& grad_y, const TensorView& grad_weights,
                             ExecContext context) {
  Group::Impl& group = *state.group;
  const uint64_t sequence = group.takeSequence();
  state.times = {};
  const WireOp op = WireOp::kDeviceCombineBackward;
  auto stream = static_cast<cudaStream_t>(context.stream);
  Status local = checkDeviceHandle(handle, group);
  const DeviceHandle* h = local.isOk() ? handle.impl()->device.get() : nullptr;
  if (local.isOk()) {
    local =
        checkMatrix("grad_out", grad_out, h->tokens, h->hidden, {DType::kF32, DType::kBF16}, true);
  }
  if (local.isOk()) local = checkMatrix("y", y, h->num_rows, h->hidden, {grad_out.dtype}, true);
  if (local.isOk()) {
    local = checkMatrix("grad_y", grad_y, h->num_rows, h->hidden, {grad_out.dtype}, true);
  }
  if (local.isOk()) {
    local = checkMatrix("grad_weights", grad_weights, h->tokens, h->topk, {DType::kF32}, true);
  }
  for (const auto& [name, view] : {std::pair<const char*, const TensorView*>{"grad_out", &grad_out},
                                   {"y", &y},
                                   {"grad_y", &grad_y},
                                   {"grad_weights", &grad_weights}}) {
    if (local.isOk()) local = checkOnDevice(name, *view, h->device);
  }
  DeviceScratch* sc = nullptr;
  if (local.isOk()) local = device::setDevice(h->device);
  if (local.isOk()) local = scratchFor(state, h->device, &sc);
  const size_t rb = local.isOk() ? rowBytes(h->hidden, grad_out.dtype) : 0;
  const size_t dot_unit = local.isOk() ? static_cast<size_t>(h->topk) * 4 : 0;
  // Round 1: grad_out travels to the experts like a dispatch of x. Every buffer is sized
  // before the round, so that nothing fails between it and the transfer.
  const int64_t rows_in = local.isOk() ? h->received() : 0;
  const size_t grad_y_bytes = local.isOk() ? static_cast<size_t>(h->num_rows) * rb : 0;
  if (local.isOk()) local = grow(sc->send_rows, static_cast<size_t>(h->sent()) * rb, h->device);
  if (local.isOk()) local = grow(sc->recv_rows, static_cast<size_t>(rows_in) * rb, h->device);
  if (local.isOk()) local = grow(sc->partial, static_cast<size_t>(rows_in) * dot_unit, h->device);
  if (local.isOk() && !h->token_major) local = grow(sc->grad, grad_y_bytes, h->device);
  if (local.isOk()) {
    local = cudaStatus(cuda::packRows(grad_out.data, h->tokens, static_cast<int64_t>(rb), h->ranks,
                                      h->send_pos.as<int32_t>(), sc->send_rows.data(), stream),
                       "pack");
  }
  if (local.isOk()) local = cudaStatus(cudaEventRecord(sc->events[0], stream), "cudaEventRecord");
  MOECOMM_RETURN_IF_ERROR(
      round(state, op, sequence, 0, local, sizeof(PeerMessage), [&](int d, std::byte* payload) {
        PeerMessage m;
        const int64_t first = h->send_offsets[d];
        m.rows = reinterpret_cast<uint64_t>(sc->send_rows.data() + first * rb);
        m.event = reinterpret_cast<uint64_t>(sc->events[0]);
        m.count = h->send_offsets[d + 1] - first;
        m.device = h->device;
        std::memcpy(payload, &m, sizeof(m));
      }));
  // The expert side: grad_y (into scratch, copied out once the call has succeeded) and the slots'
  // dot products.
  Status mid;
  if (group.device_transport != nullptr) {
    mid = moveOverDeviceTransport(group, sc->send_rows.data(), h->send_offsets,
                                  sc->recv_rows.data(), h->recv_offsets, rb, stream);
  }
  if (group.device_transport == nullptr) {
    mid = pullFromPeers(state, h->recv_offsets, rb, sc->recv_rows.data(), h->rowsReceivedFrom(),
                        h->device, stream);
  }
  // Token-major: grad_y is grad_out as received (copied out from the receive buffer at the
  // end), and combine applied no weights, so the dots are zeros.
  if (mid.isOk() && h->token_major) {
    mid = cudaStatus(
        cudaMemsetAsync(sc->partial.data(), 0, static_cast<size_t>(rows_in) * dot_unit, stream),
        "cudaMemsetAsync");
  }
  if (mid.isOk() && !h->token_major) {
    mid = cudaStatus(
        cuda::scaleIntoLayout(sc->recv_rows.data(), rowType(grad_out.dtype), h->hidden, h->topk,
                              h->row_source.as<int32_t>(), h->row_weights.as<float>(),
                              h->expert_offsets.as<int32_t>() + h->local_experts, h->num_rows,
                              sc->grad.data(), stream),
        "the expert-side gradient");
  }
  if (mid.isOk() && !h->token_major) {
    mid = cudaStatus(cuda::slotDots(sc->recv_rows.data(), y.data, rowType(grad_out.dtype),
                                    h->hidden, rows_in, h->topk, h->slot_row.as<int32_t>(),
                                    reinterpret_cast<float*>(sc->partial.data()), stream),
                     "the weight-gradient dot products");
  }
  if (mid.isOk()) mid = cudaStatus(cudaEventRecord(sc->events[1], stream), "cudaEventRecord");
  // Round 2: the dots go home (rowsHome also closes the call), and only then the outputs.
  MOECOMM_RETURN_IF_ERROR(
      rowsHome(state, op, sequence, mid, h, sc->partial.data(), dot_unit, sc, stream, [&] {
        Status s =
            cudaStatus(cuda::gatherSlotValues(
                           reinterpret_cast<const float*>(sc->back.data()), h->tokens, h->ranks,
                           h->topk, h->send_pos.as<int32_t>(), grad_weights.as<float>(), stream),
                       "the weight gradients");
        if (s.isOk()) {
          const std::byte* from = h->token_major ? sc->recv_rows.data() : sc->grad.data();
          s = cudaStatus(
              cudaMemcpyAsync(grad_y.data, from, grad_y_bytes, cudaMemcpyDeviceToDevice, stream),
              "cudaMemcpyAsync");
        }
        return s;
      }));
  return Status::ok();
}

#else

bool deviceExchangeApplies(const Group::Impl&, const TensorView&, const TensorView&,
                           const TensorView&, const TensorView*) {
  return false;
}

bool isDeviceHandle(const DispatchHandle&) {
  return false;
}

Status deviceDispatch(Dispatcher::State&, const TensorView&, const TensorView*, const TensorView&,
                      const TensorView&, ExecContext, ExpertBatch*) {
  return Status(StatusCode::kInternalError, "the GPU-native path needs a CUDA build");
}

Status deviceReduce(Dispatcher::State&, const TensorView&, const DispatchHandle&, const TensorView&,
                    bool, ExecContext) {
  return Status(StatusCode::kInternalError, "the GPU-native path needs a CUDA build");
}

Status deviceCombineBackward(Dispatcher::State&, const TensorView&, const TensorView&,
                             const DispatchHandle&, const TensorView&, const TensorView&,
                             ExecContext) {
  return Status(StatusCode::kInternalError, "the GPU-native path needs a CUDA build");
}

#endif

}  // namespace moecomm
