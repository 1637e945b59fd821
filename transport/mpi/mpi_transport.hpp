// The `mpi` transport: point-to-point MPI_Isend/MPI_Irecv on a duplicate of the bootstrap's
// communicator, so it runs wherever that MPI runs. Needs a World made from an MPI communicator.
#pragma once

#include <memory>

#include "transport/transport.hpp"

namespace moecomm {

Status createMpiTransport(Bootstrap& bootstrap, Deadline deadline, std::unique_ptr<Transport>* out);

}  // namespace moecomm
