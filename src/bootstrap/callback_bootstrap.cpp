#include "src/bootstrap/callback_bootstrap.hpp"

#include <vector>

namespace moecomm {

Status CallbackBootstrap::create(const BootstrapCallbacks& callbacks,
                                 std::unique_ptr<Bootstrap>* out) {
  if (callbacks.all_gather == nullptr) {
    return makeError(StatusCode::kInvalidArgument,
                     "BootstrapCallbacks.all_gather is null; it is required");
  }
  if (callbacks.size < 1 || callbacks.rank < 0 || callbacks.rank >= callbacks.size) {
    return makeError(StatusCode::kInvalidArgument,
                     "BootstrapCallbacks rank={} size={}: need size >= 1 and 0 <= rank < size",
                     callbacks.rank, callbacks.size);
  }
  out->reset(new CallbackBootstrap(callbacks));
  return Status::ok();
}

Status CallbackBootstrap::allGather(const void* in, void* out, size_t bytes, Deadline) {
  int rc = callbacks_.all_gather(in, out, bytes, callbacks_.context);
  if (rc != 0) {
    return makeError(StatusCode::kRemoteError,
                     "rank {}: the framework's all_gather callback failed with {} ({} bytes)",
                     callbacks_.rank, rc, bytes);
  }
  return Status::ok();
}

Status CallbackBootstrap::barrier(Deadline deadline) {
  if (callbacks_.barrier != nullptr) {
    int rc = callbacks_.barrier(callbacks_.context);
    if (rc != 0) {
      return makeError(StatusCode::kRemoteError,
                       "rank {}: the framework's barrier callback failed with {}", callbacks_.rank,
                       rc);
    }
    return Status::ok();
  }
  return Bootstrap::barrier(deadline);
}

}  // namespace moecomm
