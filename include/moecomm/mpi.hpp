// Worlds from MPI communicators, for programs started by mpirun or srun. Include after <mpi.h>
// is available; the library must have been built with MPI (MOECOMM_WITH_MPI).
#pragma once

#include <mpi.h>

#include "moecomm/group.hpp"

namespace moecomm {

// Collective over `comm`; moecomm duplicates it, so the caller's communicator stays its own.
inline World worldFromMpi(MPI_Comm comm) {
  return World::fromMpiComm(&comm);
}

}  // namespace moecomm
