// One all-to-all-v round over the group's transport: every rank sends one framed message to every
// rank (itself included) and receives one from each. Used by every dispatch/combine phase.
#pragma once

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include "src/ep/wire.hpp"
#include "src/group/group_impl.hpp"

namespace moecomm {

// Payload bytes of every message of one round, [source * ranks + destination]. Known on every
// rank once a dispatch has shared its counts, which lets the round run as one-sided puts into
// the receivers' windows at offsets every sender can compute.
using SizeMatrix = std::vector<size_t>;

// Resizing leaves new bytes uninitialized: the same buffer carries a count round, then a payload
// of tens of MiB, and value-initialization would clear the payload's bytes on every round
// before they are written anyway.
template <typename T>
struct UninitializedAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = UninitializedAllocator<U>;
  };
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
using ByteBuffer = std::vector<std::byte, UninitializedAllocator<std::byte>>;

// Where a round's messages go when it runs as puts: bytes each receiver gets, and the offset of
// each sender's message in its window.
struct PutLayout {
  std::vector<size_t> offset;  // [source * n + destination]
  size_t largest = 0;          // the most any rank receives
};

// Per-peer buffers, reused across calls (they only grow). send[p] and recv[p] start with a
// WireHeader; payload() points past it. After a round, a peer's message is read through
// recvPayload/recvHeader, which point into recv[p] or into the window.
struct Staging {
  std::vector<ByteBuffer> send;
  std::vector<ByteBuffer> recv;
  std::vector<size_t> received;
  std::vector<const std::byte*> recv_view;  // per peer: where its message landed

  // One-sided receive window (two halves, alternating by round) and the notices that follow puts.
  std::unique_ptr<Window> window;
  size_t window_half = 0;
  uint64_t rounds = 0;  // every exchange on this staging, on every rank alike
  std::vector<ByteBuffer> notice;
  std::vector<uint8_t> placed;  // per peer: the next round's message was built in its window
  std::vector<uint8_t> placed_in_round;  // the same flags, moved aside while their round runs

  // The put layout of one round, computed once for all the peers placeInWindow builds messages
  // for and for the exchange (it is O(ranks^2) to compute).
  PutLayout layout;
  uint64_t layout_round = 0;  // the value of `rounds` while that round runs; 0: none yet

  void prepare(int ranks);
  // Sizes send[p] to header + payload bytes and fills its header.
  std::byte* sendPayload(int peer, size_t payload_bytes, WireOp op, uint64_t sequence,
                         int64_t count);
  void expect(int peer, size_t payload_bytes);  // recv[p] capacity: header + payload
  const std::byte* recvPayload(int peer) const { return recv_view[peer] + sizeof(WireHeader); }
  const WireHeader& recvHeader(int peer) const {
    return *reinterpret_cast<const WireHeader*>(recv_view[peer]);
  }
};

// Window space one message of `payload_bytes` takes: header and payload, rounded up to a cache
// line so that every message (and the header and rows in it) starts aligned.
inline size_t putSlotBytes(size_t payload_bytes) {
  return (sizeof(WireHeader) + payload_bytes + 63) / 64 * 64;
}

// Makes sure every rank's window holds `half_bytes` per half. Collective: call it on every rank
// with the same value (computed from data every rank shares). A transport without puts, or
// MOECOMM_PUTS=0, leaves the staging on messages.
Status ensureWindow(Group::Impl& group, Staging& staging, size_t half_bytes);

// Where this rank's message to `peer` in the next round can be built in place: when that round
// will run as puts (`sizes`, a window large enough) and the transport maps the peer's window here
// (in-process ranks, shared memory), the message's header is written into its slot there and the
// payload's address returned; the round then sends only the notice, sparing the put's copy.
// Otherwise nullptr, and the caller packs into sendPayload as usual. The slot is free to write:
// this rank finished the previous round, so the peer has finished reading the one before it, the
// last to use that half of its window.
std::byte* placeInWindow(Group::Impl& group, Staging& staging, const SizeMatrix& sizes, int peer,
                         WireOp op, uint64_t sequence, int64_t count);

// Runs the round. With a failed `local` status, this rank sends only error headers and returns
// `local`; otherwise a peer's error, a mismatched operation or sequence, or a timeout fails it.
// With `sizes` and a window large enough, the payloads travel as puts followed by notices;
// otherwise as messages. Every rank takes the same path for the same sizes and window.
Status exchange(Group::Impl& group, Staging& staging, WireOp op, uint64_t sequence, int phase,
                const Status& local, const SizeMatrix* sizes = nullptr);

}  // namespace moecomm
