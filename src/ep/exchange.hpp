// One all-to-all-v round over the group's transport: every rank sends one framed message to every
// rank (itself included) and receives one from each. Used by every dispatch/combine phase.
#pragma once

#include <cstddef>
#include <vector>

#include "src/ep/wire.hpp"
#include "src/group/group_impl.hpp"

namespace moecomm {

// Per-peer buffers, reused across calls (they only grow). send[p] and recv[p] start with a
// WireHeader; payload() points past it.
struct Staging {
  std::vector<std::vector<std::byte>> send;
  std::vector<std::vector<std::byte>> recv;
  std::vector<size_t> received;

  void prepare(int ranks);
  // Sizes send[p] to header + payload bytes and fills its header.
  std::byte* sendPayload(int peer, size_t payload_bytes, WireOp op, uint64_t sequence,
                         int64_t count);
  void expect(int peer, size_t payload_bytes);  // recv[p] capacity: header + payload
  const std::byte* recvPayload(int peer) const { return recv[peer].data() + sizeof(WireHeader); }
  const WireHeader& recvHeader(int peer) const {
    return *reinterpret_cast<const WireHeader*>(recv[peer].data());
  }
};

// Runs the round. With a failed `local` status, this rank sends only error headers and returns
// `local`; otherwise a peer's error, a mismatched operation or sequence, or a timeout fails it.
Status exchange(Group::Impl& group, Staging& staging, WireOp op, uint64_t sequence, int phase,
                const Status& local);

}  // namespace moecomm
