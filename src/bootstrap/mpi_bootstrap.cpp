#include "src/bootstrap/mpi_bootstrap.hpp"

#include <climits>
#include <thread>

namespace moecomm {

Status MpiBootstrap::create(MPI_Comm comm, std::unique_ptr<Bootstrap>* out) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) {
    return makeError(StatusCode::kInvalidUsage,
                     "MPI is not initialized (or already finalized); call MPI_Init before "
                     "creating a World from an MPI communicator");
  }
  std::unique_ptr<MpiBootstrap> b(new MpiBootstrap());
  if (MPI_Comm_dup(comm, &b->comm_) != MPI_SUCCESS) {
    return makeError(StatusCode::kSystemError, "MPI_Comm_dup failed on the given communicator");
  }
  MPI_Comm_set_errhandler(b->comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(b->comm_, &b->rank_);
  MPI_Comm_size(b->comm_, &b->size_);
  *out = std::move(b);
  return Status::ok();
}

MpiBootstrap::~MpiBootstrap() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && !broken_ && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

Status MpiBootstrap::waitFor(MPI_Request* request, Deadline deadline, const char* what) {
  int done = 0;
  for (int spins = 0;; ++spins) {
    if (MPI_Test(request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
      return makeError(StatusCode::kSystemError, "rank {}: MPI {} failed", rank_, what);
    }
    if (done) return Status::ok();
    if (deadline.expired()) {
      broken_ = true;
      return makeError(StatusCode::kTimeout,
                       "rank {}: MPI {} timed out; some rank did not reach group creation (MPI "
                       "does not say which)",
                       rank_, what);
    }
    // Yield after a short spin: ranks may outnumber cores.
    if (spins > 64) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

Status MpiBootstrap::allGather(const void* in, void* out, size_t bytes, Deadline deadline) {
  if (broken_) {
    return makeError(StatusCode::kInvalidUsage,
                     "rank {}: the MPI bootstrap is unusable after an earlier timeout", rank_);
  }
  if (bytes > static_cast<size_t>(INT_MAX)) {
    return makeError(StatusCode::kInvalidArgument,
                     "bootstrap all-gather of {} bytes exceeds MPI's int count", bytes);
  }
  MPI_Request request;
  if (MPI_Iallgather(in, static_cast<int>(bytes), MPI_BYTE, out, static_cast<int>(bytes), MPI_BYTE,
                     comm_, &request) != MPI_SUCCESS) {
    return makeError(StatusCode::kSystemError, "rank {}: MPI_Iallgather failed", rank_);
  }
  return waitFor(&request, deadline, "all-gather");
}

Status MpiBootstrap::barrier(Deadline deadline) {
  MPI_Request request;
  if (MPI_Ibarrier(comm_, &request) != MPI_SUCCESS) {
    return makeError(StatusCode::kSystemError, "rank {}: MPI_Ibarrier failed", rank_);
  }
  return waitFor(&request, deadline, "barrier");
}

}  // namespace moecomm
