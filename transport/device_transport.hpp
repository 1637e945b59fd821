// The device-memory transport interface: moves byte ranges between ranks' GPU buffers, ordered
// on a CUDA stream. Knows nothing of tokens or experts. A Group holds one beside its host
// transport when its ranks exchange GPU memory directly (today: NCCL).
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "src/core/bootstrap.hpp"
#include "src/core/deadline.hpp"
#include "src/core/status.hpp"

namespace moecomm {

class DeviceTransport {
 public:
  virtual ~DeviceTransport() = default;
  virtual const char* name() const = 0;
  // The CUDA device this rank's side of the transport was made on.
  virtual int device() const = 0;

  // One all-to-all-v on `stream` (a cudaStream_t): send_bytes[p] from send[p] to every peer p,
  // recv_bytes[p] into recv[p] from it (either may be 0). Returns once posted; the data has moved
  // when the stream reaches that point. Every rank calls it with matching sizes.
  virtual Status allToAllV(const std::vector<const void*>& send,
                           const std::vector<size_t>& send_bytes, const std::vector<void*>& recv,
                           const std::vector<size_t>& recv_bytes, void* stream,
                           Deadline deadline) = 0;
};

// Collective over the bootstrap's ranks, on the calling thread's current CUDA device: rank 0
// makes an NCCL unique id, the bootstrap all-gathers it, and every rank joins the communicator,
// with the deadline enforced (a rank that never joins makes the others fail, not hang).
Status createNcclTransport(Bootstrap& bootstrap, Deadline deadline,
                           std::unique_ptr<DeviceTransport>* out);

}  // namespace moecomm
