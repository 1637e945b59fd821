#include "src/ep/exchange.hpp"

#include <algorithm>
#include <cstring>

#include "src/core/env.hpp"
#include "src/core/log.hpp"
#include "src/core/stream_copy.hpp"

namespace moecomm {

const char* wireOpName(WireOp op) {
  switch (op) {
    case WireOp::kDispatchCounts:
      return "dispatch (count exchange)";
    case WireOp::kDispatchPayload:
      return "dispatch";
    case WireOp::kCombine:
      return "combine";
    case WireOp::kDispatchBackward:
      return "dispatchBackward";
    case WireOp::kCombineBackwardGrad:
      return "combineBackward";
    case WireOp::kAllReduce:
      return "allReduce";
    case WireOp::kDeviceDispatch:
      return "dispatch (CUDA tensors)";
    case WireOp::kDeviceCombine:
      return "combine (CUDA tensors)";
    case WireOp::kDeviceDispatchBackward:
      return "dispatchBackward (CUDA tensors)";
    case WireOp::kDeviceCombineBackward:
      return "combineBackward (CUDA tensors)";
    case WireOp::kCombineBackwardDots:
      return "combineBackward (weight gradients)";
  }
  return "unknown operation";
}

void Staging::prepare(int ranks) {
  send.resize(static_cast<size_t>(ranks));
  recv.resize(static_cast<size_t>(ranks));
  notice.resize(static_cast<size_t>(ranks));
  placed.assign(static_cast<size_t>(ranks), 0);
  received.assign(static_cast<size_t>(ranks), 0);
  recv_view.assign(static_cast<size_t>(ranks), nullptr);
}

std::byte* Staging::sendPayload(int peer, size_t payload_bytes, WireOp op, uint64_t sequence,
                                int64_t count) {
  auto& buffer = send[peer];
  buffer.resize(sizeof(WireHeader) + payload_bytes);
  WireHeader header{kWireMagic, static_cast<uint32_t>(op), sequence, 0, 0, count};
  std::memcpy(buffer.data(), &header, sizeof(header));
  return buffer.data() + sizeof(WireHeader);
}

void Staging::expect(int peer, size_t payload_bytes) {
  recv[peer].resize(sizeof(WireHeader) + std::max(payload_bytes, kErrorTextBytes));
}

namespace {

void writeErrorMessages(Staging& staging, int ranks, WireOp op, uint64_t sequence,
                        const Status& local) {
  for (int p = 0; p < ranks; ++p) {
    std::byte* text = staging.sendPayload(p, kErrorTextBytes, op, sequence, 0);
    std::memset(text, 0, kErrorTextBytes);  // no stale bytes on the wire past the message
    auto* header = reinterpret_cast<WireHeader*>(staging.send[p].data());
    header->status = static_cast<int32_t>(local.code());
    std::snprintf(reinterpret_cast<char*>(text), kErrorTextBytes, "%s", local.message().c_str());
    if (staging.recv[p].size() < sizeof(WireHeader) + kErrorTextBytes) {
      staging.expect(p, kErrorTextBytes);
    }
  }
}

Status checkPeerMessage(const Staging& staging, int me, int peer, WireOp op, uint64_t sequence) {
  if (staging.received[peer] < sizeof(WireHeader)) {
    return makeError(StatusCode::kInternalError, "rank {}: {} got a {}-byte message from rank {}",
                     me, wireOpName(op), staging.received[peer], peer);
  }
  const WireHeader& header = staging.recvHeader(peer);
  if (header.magic != kWireMagic) {
    return makeError(StatusCode::kInternalError, "rank {}: corrupt message from rank {} in {}", me,
                     peer, wireOpName(op));
  }
  if (header.status != 0) {
    std::string text(
        reinterpret_cast<const char*>(staging.recvPayload(peer)),
        strnlen(reinterpret_cast<const char*>(staging.recvPayload(peer)), kErrorTextBytes - 1));
    return makeError(StatusCode::kRemoteError, "rank {}: {} failed because rank {} reported {}: {}",
                     me, wireOpName(op), peer, statusString(static_cast<StatusCode>(header.status)),
                     text);
  }
  if (header.op != static_cast<uint32_t>(op) || header.sequence != sequence) {
    return makeError(StatusCode::kInvalidUsage,
                     "rank {} called {} (collective #{}) while rank {} called {} (collective #{}); "
                     "every rank must make the same calls in the same order",
                     me, wireOpName(op), sequence, peer, wireOpName(static_cast<WireOp>(header.op)),
                     header.sequence);
  }
  return Status::ok();
}

// A rank's message to itself never travels: it is read where it was packed (one copy saved on
// every round, the 1/n of the traffic that stays home).
void useOwnMessage(Staging& staging, int me) {
  staging.recv_view[me] = staging.send[me].data();
  staging.received[me] = staging.send[me].size();
}

// Waits for what was posted (or withdraws it when posting failed); then, with every message in,
// this rank's own failure wins, else its own message is made readable in place.
Status finishPosting(Transport& transport, const std::vector<Request>& requests,
                     const Status& posted, Deadline deadline, WireOp op, const Status& local,
                     Staging& staging, int me) {
  if (!posted.isOk()) {
    for (const Request& r : requests) transport.cancel(r);
    return posted;
  }
  MOECOMM_RETURN_IF_ERROR(transport.waitAll(requests, deadline, wireOpName(op)));
  if (!local.isOk()) return local;
  useOwnMessage(staging, me);
  return Status::ok();
}

// The put layout of round `round`, kept in the staging: placeInWindow asks for it once per peer
// and the exchange once more, all with the round's one size matrix (messages built in place sit
// at its offsets, so the exchange cannot run with another).
const PutLayout& roundLayout(Staging& staging, const SizeMatrix& sizes, int n, uint64_t round) {
  if (staging.layout_round == round) return staging.layout;
  PutLayout& layout = staging.layout;
  layout.offset.assign(sizes.size(), 0);
  layout.largest = 0;
  for (int d = 0; d < n; ++d) {
    size_t at = 0;
    for (int s = 0; s < n; ++s) {
      layout.offset[s * n + d] = at;
      at += putSlotBytes(sizes[s * n + d]);
    }
    layout.largest = std::max(layout.largest, at);
  }
  staging.layout_round = round;
  return layout;
}

Status finishRound(Group::Impl& group, Staging& staging, WireOp op, uint64_t sequence) {
  // Report the lowest failing rank so every rank names the same culprit.
  for (int peer = 0; peer < group.size; ++peer) {
    MOECOMM_RETURN_IF_ERROR(checkPeerMessage(staging, group.rank, peer, op, sequence));
  }
  return Status::ok();
}

// The round as puts: each payload goes straight into its receiver's window, then a zero-byte
// notice follows on the same tag. A rank that failed sends its error text as the notice instead.
// A message built in place (`placed`) is already there: only its notice goes.
Status exchangeByPuts(Group::Impl& group, Staging& staging, WireOp op, uint64_t sequence,
                      uint64_t tag, const Status& local, const SizeMatrix& sizes,
                      const PutLayout& layout, const std::vector<uint8_t>& placed) {
  const int n = group.size;
  const int me = group.rank;
  Transport& transport = *group.transport;
  const size_t half = (staging.rounds % 2) * staging.window_half;
  MOECOMM_LOG(LogLevel::kTrace, "rank {}: {} #{} as puts into window half {}", me, wireOpName(op),
              sequence, staging.rounds % 2);
  std::vector<Request> requests;
  requests.reserve(static_cast<size_t>(2 * n));
  Status posted;
  for (int i = 1; i < n && posted.isOk(); ++i) {
    const int peer = (me + i) % n;
    staging.notice[peer].resize(sizeof(WireHeader) + kErrorTextBytes);
    Request r;
    posted =
        transport.postRecv(peer, staging.notice[peer].data(), staging.notice[peer].size(), tag, &r);
    if (posted.isOk()) requests.push_back(r);
  }
  for (int i = 1; i < n && posted.isOk(); ++i) {
    const int peer = (me + i) % n;
    Request r;
    if (!local.isOk()) {
      posted =
          transport.postSend(peer, staging.send[peer].data(), staging.send[peer].size(), tag, &r);
    } else if (placed[peer] != 0) {
      posted = transport.postPut(*staging.window, peer, half + layout.offset[me * n + peer],
                                 nullptr, 0, tag, &r);
    } else if (staging.send[peer].size() != sizeof(WireHeader) + sizes[me * n + peer]) {
      posted = makeError(StatusCode::kInternalError,
                         "rank {}: {} message to rank {} has {} bytes but the layout says {}", me,
                         wireOpName(op), peer, staging.send[peer].size(),
                         sizeof(WireHeader) + sizes[me * n + peer]);
    } else {
      posted = transport.postPut(*staging.window, peer, half + layout.offset[me * n + peer],
                                 staging.send[peer].data(), staging.send[peer].size(), tag, &r);
    }
    if (posted.isOk()) requests.push_back(r);
  }
  MOECOMM_RETURN_IF_ERROR(
      finishPosting(transport, requests, posted, group.deadline(), op, local, staging, me));
  for (const Request& r : requests) {
    if (r->is_send) continue;
    const int p = r->peer;
    if (r->bytes == 0) {  // the data is in our window
      staging.recv_view[p] = staging.window->data + half + layout.offset[p * n + me];
      staging.received[p] = sizeof(WireHeader) + sizes[p * n + me];
    } else {  // the peer failed: its notice is its error report
      staging.recv_view[p] = staging.notice[p].data();
      staging.received[p] = r->bytes;
    }
  }
  return finishRound(group, staging, op, sequence);
}

}  // namespace

Status ensureWindow(Group::Impl& group, Staging& staging, size_t half_bytes) {
  static const bool enabled = envInt("MOECOMM_PUTS", 1) != 0;
  if (!enabled || !group.transport->supportsPut() || half_bytes <= staging.window_half) {
    return Status::ok();
  }
  // Grow by half again, so that slowly growing batches do not re-register every call.
  size_t half = std::max(half_bytes, staging.window_half + staging.window_half / 2);
  half = (half + 63) / 64 * 64;  // the second half starts aligned too
  staging.window.reset();
  staging.window_half = 0;
  std::unique_ptr<Window> window;
  MOECOMM_RETURN_IF_ERROR(group.transport->createWindow(2 * half, group.deadline(), &window));
  staging.window = std::move(window);
  staging.window_half = half;
  return Status::ok();
}

std::byte* placeInWindow(Group::Impl& group, Staging& staging, const SizeMatrix& sizes, int peer,
                         WireOp op, uint64_t sequence, int64_t count) {
  const int n = group.size;
  if (peer == group.rank || !staging.window || staging.placed.size() != static_cast<size_t>(n)) {
    return nullptr;
  }
  std::byte* part = group.transport->mappedPart(*staging.window, peer);
  if (part == nullptr) return nullptr;
  const PutLayout& layout = roundLayout(staging, sizes, n, staging.rounds + 1);
  if (layout.largest > staging.window_half) return nullptr;  // the round will not be puts
  const size_t half = ((staging.rounds + 1) % 2) * staging.window_half;
  std::byte* slot = part + half + layout.offset[group.rank * n + peer];
  const WireHeader header{kWireMagic, static_cast<uint32_t>(op), sequence, 0, 0, count};
  std::memcpy(slot, &header, sizeof(header));
  staging.placed[peer] = 1;
  return slot + sizeof(WireHeader);
}

Status exchange(Group::Impl& group, Staging& staging, WireOp op, uint64_t sequence, int phase,
                const Status& local, const SizeMatrix* sizes) {
  const int n = group.size;
  const int me = group.rank;
  const uint64_t tag = sequence * 8 + static_cast<uint64_t>(phase);
  if (!local.isOk()) writeErrorMessages(staging, n, op, sequence, local);
  // The flags hold for this round only: they move aside, and the next round's start cleared
  // (both buffers keep their capacity, so no round allocates).
  std::vector<uint8_t>& placed = staging.placed_in_round;
  placed.swap(staging.placed);
  placed.resize(static_cast<size_t>(n), 0);
  staging.placed.assign(static_cast<size_t>(n), 0);
  const bool any_placed = std::find(placed.begin(), placed.end(), 1) != placed.end();
  ++staging.rounds;
  if (sizes != nullptr && staging.window) {
    const PutLayout& layout = roundLayout(staging, *sizes, n, staging.rounds);
    if (layout.largest <= staging.window_half) {
      // Messages built in place may have used streaming stores: they land before the notices.
      if (any_placed) streamFence();
      return exchangeByPuts(group, staging, op, sequence, tag, local, *sizes, layout, placed);
    }
  }
  if (any_placed) {
    return makeError(StatusCode::kInternalError,
                     "rank {}: {} built messages in place but the round is not running as puts", me,
                     wireOpName(op));
  }

  Transport& transport = *group.transport;
  std::vector<Request> requests;
  requests.reserve(static_cast<size_t>(2 * n));
  Deadline deadline = group.deadline();
  Status posted;
  // Receives first, then sends starting at the next rank, so no rank is everybody's first target.
  for (int i = 1; i < n && posted.isOk(); ++i) {
    int peer = (me + i) % n;
    Request request;
    posted = transport.postRecv(peer, staging.recv[peer].data(), staging.recv[peer].size(), tag,
                                &request);
    if (posted.isOk()) requests.push_back(request);
  }
  for (int i = 1; i < n && posted.isOk(); ++i) {
    int peer = (me + i) % n;
    Request request;
    posted = transport.postSend(peer, staging.send[peer].data(), staging.send[peer].size(), tag,
                                &request);
    if (posted.isOk()) requests.push_back(request);
  }
  MOECOMM_RETURN_IF_ERROR(
      finishPosting(transport, requests, posted, deadline, op, local, staging, me));
  for (const Request& r : requests) {
    if (r->is_send) continue;
    staging.received[r->peer] = r->bytes;
    staging.recv_view[r->peer] = staging.recv[r->peer].data();
    if (r->truncated) {
      // Receives are sized for the larger of the expected payload and an error report, so only
      // a disagreement about sizes (a bug) can overflow one; its contents are not to be trusted.
      return makeError(StatusCode::kInternalError,
                       "rank {}: {} message from rank {} was larger than expected", me,
                       wireOpName(op), r->peer);
    }
  }
  return finishRound(group, staging, op, sequence);
}

}  // namespace moecomm
