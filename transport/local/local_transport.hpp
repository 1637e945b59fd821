// The `local` transport: ranks are threads of one process. A send and its matching receive meet in
// the receiver's mailbox; whichever is posted second copies the bytes (one copy, no staging).
#pragma once

#include <memory>

#include "transport/transport.hpp"

namespace moecomm {

// Collective over the bootstrap's ranks, which must all live in this process.
Status createLocalTransport(Bootstrap& bootstrap, Deadline deadline,
                            std::unique_ptr<Transport>* out);

}  // namespace moecomm
