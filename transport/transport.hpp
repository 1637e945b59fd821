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

  // Waits for all; on a deadline, cancels what is left and names the peers that did not answer.
  Status waitAll(const std::vector<Request>& requests, Deadline deadline, const char* what);
};

}  // namespace moecomm
