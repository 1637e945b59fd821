// The `ucx` transport: one UCP worker per rank and an endpoint to every rank (itself included),
// created from worker addresses exchanged through the bootstrap. UCX picks shared memory between
// processes of one host and TCP or RDMA between hosts; the choice is logged at info level.
#pragma once

#include <memory>

#include "transport/transport.hpp"

namespace moecomm {

// Collective over the bootstrap's ranks.
Status createUcxTransport(Bootstrap& bootstrap, Deadline deadline, std::unique_ptr<Transport>* out);

}  // namespace moecomm
