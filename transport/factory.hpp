// Transport construction by name, and what this build offers.
#pragma once

#include <memory>
#include <string>

#include "transport/transport.hpp"

namespace moecomm {

// Bit per transport built into this library, gathered at group creation so that "auto" picks
// one that every rank has.
// nccl moves GPU memory only: a group on nccl also makes a host transport (picked as for "auto")
// for its control rounds.
enum TransportBit : uint32_t {
  kTransportLocal = 1,
  kTransportUcx = 2,
  kTransportMpi = 4,
  kTransportNccl = 8,
};
uint32_t builtTransports();
std::string transportList(uint32_t bits);        // "local, ucx"
uint32_t transportBit(const std::string& name);  // 0 for an unknown name

// Collective over the bootstrap's ranks; every rank passes the same name.
Status createTransport(const std::string& name, Bootstrap& bootstrap, Deadline deadline,
                       std::unique_ptr<Transport>* out);

}  // namespace moecomm
