// How ranks find each other: rank, size, all-gather and barrier, separate from the transport that
// moves the data (as gloo keeps its Store apart from its pairs). Implementations: src/bootstrap/.
#pragma once

#include <cstddef>
#include <vector>

#include "src/core/deadline.hpp"
#include "src/core/status.hpp"

namespace moecomm {

class Bootstrap {
 public:
  virtual ~Bootstrap() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "threads", "env", "mpi" or "callback": for logs and for transports that need a native handle.
  virtual const char* kind() const = 0;
  // A pointer to the MPI_Comm of an MPI bootstrap; nullptr otherwise.
  virtual const void* mpiComm() const { return nullptr; }
  // Every rank contributes `bytes` from `in`; `out` receives size() * bytes, rank-ordered. Every
  // rank must pass the same `bytes`. Fails with kTimeout naming the ranks that did not arrive.
  virtual Status allGather(const void* in, void* out, size_t bytes, Deadline deadline) = 0;
  // Returns once every rank has called it. By default a one-byte all-gather.
  virtual Status barrier(Deadline deadline) {
    std::vector<std::byte> sink(static_cast<size_t>(size()));
    std::byte token{0};
    return allGather(&token, sink.data(), 1, deadline);
  }
};

}  // namespace moecomm
