// The bootstrap a framework plugs in: its own process group's all-gather and barrier, called
// through function pointers. moecomm cannot put a deadline on a foreign collective; the
// framework's own timeout governs those calls.
#pragma once

#include "moecomm/group.hpp"
#include "src/core/bootstrap.hpp"

namespace moecomm {

class CallbackBootstrap final : public Bootstrap {
 public:
  static Status create(const BootstrapCallbacks& callbacks, std::unique_ptr<Bootstrap>* out);
  int rank() const override { return callbacks_.rank; }
  int size() const override { return callbacks_.size; }
  const char* kind() const override { return "callback"; }
  Status allGather(const void* in, void* out, size_t bytes, Deadline deadline) override;
  Status barrier(Deadline deadline) override;

 private:
  explicit CallbackBootstrap(const BootstrapCallbacks& callbacks) : callbacks_(callbacks) {}
  BootstrapCallbacks callbacks_;
};

}  // namespace moecomm
