// NCCL behind the DeviceTransport interface. The communicator is non-blocking, so every wait on
// it polls ncclCommGetAsyncError against a deadline and aborts the communicator on expiry.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstring>
#include <thread>

#include "src/core/log.hpp"
#include "transport/device_transport.hpp"

namespace moecomm {

namespace {

Status ncclError(ncclResult_t result, const char* what, int rank) {
  return makeError(StatusCode::kSystemError, "rank {}: {} failed: {} ({}){}", rank, what,
                   ncclGetErrorString(result), ncclGetLastError(nullptr),
                   result == ncclInvalidUsage
                       ? "; NCCL takes one GPU per rank: ranks that share a GPU use the local "
                         "transport"
                       : "");
}

// Waits while the communicator reports ncclInProgress, until the deadline. On failure the
// caller aborts the communicator.
Status settle(ncclComm_t comm, ncclResult_t started, const char* what, int rank,
              Deadline deadline) {
  ncclResult_t state = started;
  while (state == ncclInProgress) {
    if (deadline.expired()) {
      return makeError(StatusCode::kTimeout,
                       "rank {}: {} did not finish before the deadline; the NCCL communicator is "
                       "aborted (a peer may have died or never joined)",
                       rank, what);
    }
    std::this_thread::yield();
    if (ncclCommGetAsyncError(comm, &state) != ncclSuccess) break;
  }
  if (state != ncclSuccess) return ncclError(state, what, rank);
  return Status::ok();
}

class NcclTransport final : public DeviceTransport {
 public:
  NcclTransport(ncclComm_t comm, int rank, int size, int device)
      : comm_(comm), rank_(rank), size_(size), device_(device) {}
  ~NcclTransport() override {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
  }
  const char* name() const override { return "nccl"; }
  int device() const override { return device_; }

  Status allToAllV(const std::vector<const void*>& send, const std::vector<size_t>& send_bytes,
                   const std::vector<void*>& recv, const std::vector<size_t>& recv_bytes,
                   void* stream, Deadline deadline) override {
    if (comm_ == nullptr) {
      return makeError(StatusCode::kInvalidUsage,
                       "rank {}: the NCCL communicator was aborted after an earlier failure; "
                       "create a new group",
                       rank_);
    }
    auto s = static_cast<cudaStream_t>(stream);
    ncclResult_t result = ncclGroupStart();
    for (int p = 0; p < size_ && result == ncclSuccess; ++p) {
      if (send_bytes[p] > 0) result = ncclSend(send[p], send_bytes[p], ncclUint8, p, comm_, s);
      if (result == ncclSuccess && recv_bytes[p] > 0) {
        result = ncclRecv(recv[p], recv_bytes[p], ncclUint8, p, comm_, s);
      }
    }
    const ncclResult_t ended = ncclGroupEnd();
    Status status = result != ncclSuccess && result != ncclInProgress
                        ? ncclError(result, "posting the NCCL all-to-all", rank_)
                        : settle(comm_, ended, "the NCCL all-to-all", rank_, deadline);
    if (!status.isOk()) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    return status;
  }

 private:
  ncclComm_t comm_;
  int rank_;
  int size_;
  int device_;
};

}  // namespace

Status createNcclTransport(Bootstrap& bootstrap, Deadline deadline,
                           std::unique_ptr<DeviceTransport>* out) {
  const int rank = bootstrap.rank();
  const int size = bootstrap.size();
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    return makeError(StatusCode::kInvalidUsage,
                     "rank {}: the nccl transport needs a usable GPU (set the rank's device with "
                     "cudaSetDevice before creating the group)",
                     rank);
  }
  // Rank 0's id reaches everyone through the bootstrap (each rank contributes one; only rank
  // 0's is used). A failure to make it still takes part, so that no rank waits.
  ncclUniqueId mine;
  std::memset(&mine, 0, sizeof(mine));
  ncclResult_t made = ncclSuccess;
  if (rank == 0) made = ncclGetUniqueId(&mine);
  std::vector<ncclUniqueId> all(static_cast<size_t>(size));
  MOECOMM_RETURN_IF_ERROR(bootstrap.allGather(&mine, all.data(), sizeof(mine), deadline));
  if (made != ncclSuccess) return ncclError(made, "ncclGetUniqueId", rank);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  const ncclResult_t started = ncclCommInitRankConfig(&comm, size, all[0], rank, &config);
  if (started != ncclSuccess && started != ncclInProgress) {
    return ncclError(started, "ncclCommInitRankConfig", rank);
  }
  Status joined = settle(comm, started, "joining the NCCL communicator", rank, deadline);
  if (!joined.isOk()) {
    ncclCommAbort(comm);
    return joined;
  }
  MOECOMM_LOG(LogLevel::kInfo, "rank {}/{}: nccl transport on cuda:{} (NCCL {})", rank, size,
              device, NCCL_VERSION_CODE);
  *out = std::make_unique<NcclTransport>(comm, rank, size, device);
  return Status::ok();
}

}  // namespace moecomm
