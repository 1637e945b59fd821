// The private state of a Dispatcher: its group, options and reusable staging buffers.
#pragma once

#include <memory>
#include <vector>

#include "moecomm/dispatch.hpp"
#include "src/ep/exchange.hpp"
#include "src/ep/handle_impl.hpp"

namespace moecomm {

struct DeviceScratch;  // the GPU-native path's reusable buffers and events

struct Dispatcher::State {
  std::shared_ptr<Group::Impl> group;  // keeps the group alive while the dispatcher is
  DispatchOptions options;
  Staging staging;
  DispatchTimes times;                // of the last call
  std::vector<int64_t> row_of_token;  // combine: each token's row in each rank's payload, reused
  std::shared_ptr<DeviceScratch> device;
};

// Checks that `handle` came from a dispatch on `group`.
Status checkHandle(const DispatchHandle& handle, const Group::Impl& group);

}  // namespace moecomm
