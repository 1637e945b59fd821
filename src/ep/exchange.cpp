#include "src/ep/exchange.hpp"

#include <algorithm>
#include <cstring>

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
    case WireOp::kCombineBackwardDots:
      return "combineBackward (weight gradients)";
  }
  return "unknown operation";
}

void Staging::prepare(int ranks) {
  send.resize(static_cast<size_t>(ranks));
  recv.resize(static_cast<size_t>(ranks));
  received.assign(static_cast<size_t>(ranks), 0);
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

}  // namespace

Status exchange(Group::Impl& group, Staging& staging, WireOp op, uint64_t sequence, int phase,
                const Status& local) {
  const int n = group.size;
  const int me = group.rank;
  if (!local.isOk()) writeErrorMessages(staging, n, op, sequence, local);

  Transport& transport = *group.transport;
  const uint64_t tag = sequence * 8 + static_cast<uint64_t>(phase);
  std::vector<Request> requests;
  requests.reserve(static_cast<size_t>(2 * n));
  Deadline deadline = group.deadline();
  Status posted;
  // Receives first, then sends starting at the next rank, so no rank is everybody's first target.
  for (int i = 0; i < n && posted.isOk(); ++i) {
    int peer = (me + i) % n;
    Request request;
    posted = transport.postRecv(peer, staging.recv[peer].data(), staging.recv[peer].size(), tag,
                                &request);
    if (posted.isOk()) requests.push_back(request);
  }
  for (int i = 1; i <= n && posted.isOk(); ++i) {
    int peer = (me + i) % n;
    Request request;
    posted = transport.postSend(peer, staging.send[peer].data(), staging.send[peer].size(), tag,
                                &request);
    if (posted.isOk()) requests.push_back(request);
  }
  Status waited = posted.isOk() ? transport.waitAll(requests, deadline, wireOpName(op)) : posted;
  if (!posted.isOk()) {
    for (const Request& r : requests) transport.cancel(r);
  }
  if (!waited.isOk()) return waited;
  if (!local.isOk()) return local;

  for (const Request& r : requests) {
    if (r->is_send) continue;
    staging.received[r->peer] = r->bytes;
    if (r->truncated) {
      // Receives are sized for the larger of the expected payload and an error report, so only
      // a disagreement about sizes (a bug) can overflow one; its contents are not to be trusted.
      return makeError(StatusCode::kInternalError,
                       "rank {}: {} message from rank {} was larger than expected", me,
                       wireOpName(op), r->peer);
    }
  }
  // Report the lowest failing rank so every rank names the same culprit.
  for (int peer = 0; peer < n; ++peer) {
    MOECOMM_RETURN_IF_ERROR(checkPeerMessage(staging, me, peer, op, sequence));
  }
  return Status::ok();
}

}  // namespace moecomm
