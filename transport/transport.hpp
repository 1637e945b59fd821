// The transport interface: a small non-blocking contract that moves byte ranges between ranks and
// knows nothing of tokens or experts. Operations are posted, progressed, tested and waited on with
// a deadline. Matching is by (peer, tag), first posted first matched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "src/core/bootstrap.hpp"
#include "src/core/deadline.hpp"
#include "src/core/status.hpp"

namespace moecomm {

// A posted operation. Transports derive their own state from it.
struct RequestBase {
  virtual ~RequestBase() = default;
  int peer = -1;
  bool is_send = false;
  size_t bytes = 0;  // send: bytes sent; recv: bytes received once complete
  // recv: the message was longer than the buffer. What landed is transport-defined (local and mpi
  // deliver the prefix; ucx may not), so a truncated message must not be read.
  bool truncated = false;
};
using Request = std::shared_ptr<RequestBase>;

// Memory registered for one-sided puts: every rank holds `bytes` of it and peers write into it
// directly where the transport can (shared memory, RDMA). Made collectively by createWindow.
struct Window {
  virtual ~Window() = default;
  std::byte* data = nullptr;  // this rank's part
  size_t bytes = 0;
};

// Tags at or above this are the transports' own (window set-up); callers use smaller ones.
inline constexpr uint64_t kControlTagBase = uint64_t{1} << 42;

class Transport {
 public:
  virtual ~Transport() = default;
  virtual const char* name() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // `data` must stay valid and untouched until the request completes or is cancelled.
  virtual Status postSend(int peer, const void* data, size_t bytes, uint64_t tag, Request* out) = 0;
  // A receive completes with the sender's byte count; a longer message is reported truncated.
  virtual Status postRecv(int peer, void* data, size_t capacity, uint64_t tag, Request* out) = 0;
  // Drives outstanding operations; never blocks.
  virtual Status progress() = 0;
  virtual bool isComplete(const Request& request) = 0;
  // Blocks until `request` completes or the deadline passes (then kTimeout, request still posted).
  virtual Status wait(const Request& request, Deadline deadline) = 0;
  // Withdraws a request that has not completed; afterwards its buffer is no longer touched.
  virtual void cancel(const Request& request) = 0;

  // Puts are optional; a transport without them says so and its callers send messages instead.
  virtual bool supportsPut() const { return false; }
  // Collective over the ranks; every rank passes the same size.
  virtual Status createWindow(size_t bytes, Deadline deadline, std::unique_ptr<Window>* out);
  // Copies `bytes` from `src` into `peer`'s part of `window` at `offset`, then sends `peer` a
  // zero-byte message with `tag` that is ordered after the data: once the peer has received that
  // notice, the data has landed. `src` must stay valid until the request completes.
  virtual Status postPut(Window& window, int peer, size_t offset, const void* src, size_t bytes,
                         uint64_t tag, Request* out);
  // `peer`'s part of `window` as this rank's own memory, when the transport maps it here
  // (in-process ranks, shared memory on one host); nullptr otherwise. A caller may write a put's
  // data there itself and then post a zero-byte put as its notice, saving one copy.
  virtual std::byte* mappedPart(Window& window, int peer);

  // Waits for all; on a deadline, cancels what is left and names the peers that did not answer.
  Status waitAll(const std::vector<Request>& requests, Deadline deadline, const char* what);

 protected:
  // Every rank contributes `bytes`; `out` gets size() * bytes in rank order. Over this
  // transport's own messages, with a control tag.
  Status allGatherBytes(const void* in, size_t bytes, std::vector<std::byte>* out,
                        Deadline deadline);
  uint64_t next_control_tag_ = kControlTagBase;
};

}  // namespace moecomm
