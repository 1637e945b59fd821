// The state behind a public Group: agreed configuration, bootstrap, transport, and the sequence
// number that keeps every rank's collectives apart on the wire.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "moecomm/group.hpp"
#include "src/core/bootstrap.hpp"
#include "src/core/deadline.hpp"
#include "src/core/status.hpp"
#include "transport/device_transport.hpp"
#include "transport/transport.hpp"

namespace moecomm {

struct Group::Impl {
  GroupConfig config;
  int rank = 0;
  int size = 1;
  int local_experts = 0;
  int64_t timeout_ms = 0;
  std::shared_ptr<Bootstrap> bootstrap;
  std::unique_ptr<Transport> transport;
  // Set on a group whose transport is nccl: moves GPU buffers; `transport` carries the control
  // rounds.
  std::unique_ptr<DeviceTransport> device_transport;
  uint64_t next_sequence = 1;

  mutable std::mutex error_mutex;
  std::string last_error;

  Deadline deadline() const { return Deadline::afterMs(timeout_ms); }
  // Every collective takes the next number on every rank, whether it succeeds or not.
  uint64_t takeSequence() { return next_sequence++; }
  // Records a failed status as the group's last error, then throws it.
  void raise(const Status& status);
};

struct World::State {
  std::shared_ptr<Bootstrap> bootstrap;
  int local_rank = 0;
  int64_t timeout_ms = 0;
};

// Collective over the bootstrap's ranks: agrees on the config, picks and creates the transport.
Status createGroup(std::shared_ptr<Bootstrap> bootstrap, const GroupConfig& config,
                   std::shared_ptr<Group::Impl>* out);

// Checks the fields every rank must agree on, without communication.
Status validateGroupConfig(const GroupConfig& config, int ranks);

}  // namespace moecomm
