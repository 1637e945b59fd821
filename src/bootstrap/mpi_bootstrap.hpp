// The bootstrap of ranks started by mpirun or srun: collectives on a duplicate of the caller's
// communicator, posted non-blocking and tested so that the deadline holds.
#pragma once

#include <mpi.h>

#include "src/core/bootstrap.hpp"

namespace moecomm {

class MpiBootstrap final : public Bootstrap {
 public:
  // `comm` is the caller's communicator; MPI must be initialized.
  static Status create(MPI_Comm comm, std::unique_ptr<Bootstrap>* out);
  ~MpiBootstrap() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* kind() const override { return "mpi"; }
  const void* mpiComm() const override { return &comm_; }
  Status allGather(const void* in, void* out, size_t bytes, Deadline deadline) override;
  Status barrier(Deadline deadline) override;

 private:
  MpiBootstrap() = default;
  Status waitFor(MPI_Request* request, Deadline deadline, const char* what);
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  bool broken_ = false;  // a collective timed out: the communicator cannot be trusted again
};

}  // namespace moecomm
