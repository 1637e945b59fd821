#include "transport/mpi/mpi_transport.hpp"

#include <mpi.h>

#include <climits>
#include <thread>

#include "src/core/log.hpp"

namespace moecomm {

namespace {

struct MpiRequest final : RequestBase {
  MPI_Request handle = MPI_REQUEST_NULL;
  bool done = false;
  int error = MPI_SUCCESS;
  size_t capacity = 0;
};

class MpiTransport final : public Transport {
 public:
  MpiTransport(MPI_Comm comm, int rank, int size, int tag_ub)
      : comm_(comm), rank_(rank), size_(size), tag_ub_(tag_ub) {}
  ~MpiTransport() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }
  const char* name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Status postSend(int peer, const void* data, size_t bytes, uint64_t tag, Request* out) override {
    return post(true, peer, const_cast<void*>(data), bytes, tag, out);
  }
  Status postRecv(int peer, void* data, size_t capacity, uint64_t tag, Request* out) override {
    return post(false, peer, data, capacity, tag, out);
  }
  Status progress() override {
    int flag = 0;
    MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, MPI_STATUS_IGNORE);
    return Status::ok();
  }
  bool isComplete(const Request& request) override {
    auto& r = static_cast<MpiRequest&>(*request);
    test(r);
    return r.done;
  }
  Status wait(const Request& request, Deadline deadline) override;
  void cancel(const Request& request) override;

 private:
  Status post(bool send, int peer, void* data, size_t bytes, uint64_t tag, Request* out);
  void test(MpiRequest& r);

  MPI_Comm comm_;
  int rank_;
  int size_;
  int tag_ub_;
};

Status MpiTransport::post(bool send, int peer, void* data, size_t bytes, uint64_t tag,
                          Request* out) {
  if (peer < 0 || peer >= size_) {
    return makeError(StatusCode::kInvalidArgument, "rank {} out of range [0, {})", peer, size_);
  }
  if (bytes > static_cast<size_t>(INT_MAX)) {
    return makeError(StatusCode::kInvalidArgument,
                     "a {}-byte message exceeds MPI's int count (2 GiB); use transport 'ucx' or "
                     "fewer tokens per call",
                     bytes);
  }
  auto r = std::make_shared<MpiRequest>();
  r->peer = peer;
  r->is_send = send;
  r->bytes = send ? bytes : 0;
  r->capacity = bytes;
  // Tags wrap at the MPI's upper bound; messages between two ranks on one communicator do not
  // overtake each other, so only tags in flight at once must differ.
  const int mpi_tag = static_cast<int>(tag % (static_cast<uint64_t>(tag_ub_) + 1));
  int rc =
      send ? MPI_Isend(data, static_cast<int>(bytes), MPI_BYTE, peer, mpi_tag, comm_, &r->handle)
           : MPI_Irecv(data, static_cast<int>(bytes), MPI_BYTE, peer, mpi_tag, comm_, &r->handle);
  if (rc != MPI_SUCCESS) {
    return makeError(StatusCode::kSystemError, "rank {}: MPI_{} with rank {} failed ({})", rank_,
                     send ? "Isend" : "Irecv", peer, rc);
  }
  *out = r;
  return Status::ok();
}

void MpiTransport::test(MpiRequest& r) {
  if (r.done) return;
  int flag = 0;
  MPI_Status status;
  int rc = MPI_Test(&r.handle, &flag, &status);
  if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS) {
    r.done = true;
    r.error = rc;
    return;
  }
  if (!flag) return;
  r.done = true;
  if (!r.is_send) {
    if (status.MPI_ERROR == MPI_ERR_TRUNCATE) {
      r.truncated = true;
      r.bytes = r.capacity;
      return;
    }
    int count = 0;
    MPI_Get_count(&status, MPI_BYTE, &count);
    r.bytes = static_cast<size_t>(count);
  }
}

Status MpiTransport::wait(const Request& request, Deadline deadline) {
  auto& r = static_cast<MpiRequest&>(*request);
  for (int spins = 0; !r.done; ++spins) {
    test(r);
    if (r.done) break;
    if (deadline.expired()) {
      return makeError(StatusCode::kTimeout, "rank {}: MPI {} with rank {} timed out", rank_,
                       r.is_send ? "send" : "receive", r.peer);
    }
    // Short spin, then yield the core: ranks may outnumber cores.
    if (spins > 64) std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  if (r.error == MPI_ERR_TRUNCATE) {
    r.truncated = true;
    r.bytes = r.capacity;
    return Status::ok();
  }
  if (r.error != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(r.error, text, &length);
    return makeError(StatusCode::kRemoteError, "rank {}: MPI {} with rank {} failed: {}", rank_,
                     r.is_send ? "send" : "receive", r.peer, std::string(text, length));
  }
  return Status::ok();
}

void MpiTransport::cancel(const Request& request) {
  auto& r = static_cast<MpiRequest&>(*request);
  if (r.done) return;
  MPI_Cancel(&r.handle);
  Deadline deadline = Deadline::afterMs(1000);
  while (!r.done && !deadline.expired()) test(r);
  if (!r.done) {
    // A send the peer never matched: let MPI finish it in the background.
    MPI_Request_free(&r.handle);
    r.done = true;
  }
}

}  // namespace

Status createMpiTransport(Bootstrap& bootstrap, Deadline deadline,
                          std::unique_ptr<Transport>* out) {
  const void* comm = bootstrap.mpiComm();
  if (comm == nullptr) {
    return makeError(StatusCode::kInvalidUsage,
                     "transport 'mpi' needs a World made from an MPI communicator "
                     "(moecomm::worldFromMpi), but this group bootstraps through '{}'; use 'ucx'",
                     bootstrap.kind());
  }
  // MPI_Comm_idup, tested until the deadline: a blocking dup would wait forever for a lost rank.
  MPI_Comm dup = MPI_COMM_NULL;
  MPI_Request request;
  if (MPI_Comm_idup(*static_cast<const MPI_Comm*>(comm), &dup, &request) != MPI_SUCCESS) {
    return makeError(StatusCode::kSystemError, "MPI_Comm_idup failed");
  }
  for (int done = 0, spins = 0; !done; ++spins) {
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (done) break;
    if (deadline.expired()) {
      return makeError(StatusCode::kTimeout,
                       "rank {}: MPI_Comm_idup for transport 'mpi' timed out; some rank did not "
                       "reach group creation",
                       bootstrap.rank());
    }
    if (spins > 64) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  int* tag_ub = nullptr;
  int found = 0;
  MPI_Comm_get_attr(dup, MPI_TAG_UB, &tag_ub, &found);
  int rank = 0, size = 0;
  MPI_Comm_rank(dup, &rank);
  MPI_Comm_size(dup, &size);
  *out = std::make_unique<MpiTransport>(dup, rank, size, found && tag_ub ? *tag_ub : 32767);
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(version, &length);
  std::string library(version, static_cast<size_t>(length));
  MOECOMM_LOG(LogLevel::kInfo, "rank {}/{}: transport 'mpi' ({})", rank, size,
              library.substr(0, library.find('\n')));
  return Status::ok();
}

}  // namespace moecomm
