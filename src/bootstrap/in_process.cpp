#include "src/bootstrap/in_process.hpp"

#include <cstring>

#include "src/core/rank_list.hpp"

namespace moecomm {

LocalWorld::LocalWorld(int size) {
  if (size < 1) {
    throw Error(StatusCode::kInvalidArgument,
                text::format("LocalWorld size must be >= 1, got {}", size));
  }
  state_ = std::make_shared<State>(size);
}

int LocalWorld::size() const noexcept {
  return state_->size;
}

Status InProcessBootstrap::allGather(const void* in, void* out, size_t bytes, Deadline deadline) {
  LocalWorld::State& w = *world_;
  std::unique_lock<std::mutex> lock(w.mutex);
  if (!w.broken.empty()) {
    return makeError(StatusCode::kRemoteError, "rank {}: the local world is unusable: {}", rank_,
                     w.broken);
  }
  if (w.arrived_count > 0 && bytes != w.bytes) {
    return makeError(StatusCode::kInvalidUsage,
                     "rank {}: allGather of {} bytes while other ranks gather {} bytes; every rank "
                     "must make the same collective calls in the same order",
                     rank_, bytes, w.bytes);
  }
  w.bytes = bytes;
  w.slots[rank_].assign(static_cast<const std::byte*>(in),
                        static_cast<const std::byte*>(in) + bytes);
  w.arrived[rank_] = true;
  const uint64_t my_generation = w.generation;
  if (++w.arrived_count == w.size) {
    w.result.resize(bytes * static_cast<size_t>(w.size));
    for (int r = 0; r < w.size; ++r) {
      if (bytes > 0) std::memcpy(w.result.data() + bytes * r, w.slots[r].data(), bytes);
      w.arrived[r] = false;
    }
    w.arrived_count = 0;
    ++w.generation;
    w.cv.notify_all();
  } else {
    bool done = w.cv.wait_until(lock, deadline.when(),
                                [&] { return w.generation != my_generation || !w.broken.empty(); });
    if (!done) {
      std::vector<int> missing;
      for (int r = 0; r < w.size; ++r) {
        if (!w.arrived[r]) missing.push_back(r);
      }
      w.broken = text::format("rank {} timed out in a bootstrap collective waiting for rank(s) {}",
                              rank_, formatRankList(missing));
      w.cv.notify_all();
      return makeError(StatusCode::kTimeout, "{}; check that every rank reaches this call",
                       w.broken);
    }
    if (w.generation == my_generation) {
      return makeError(StatusCode::kRemoteError, "rank {}: the local world is unusable: {}", rank_,
                       w.broken);
    }
  }
  if (bytes > 0) std::memcpy(out, w.result.data(), bytes * static_cast<size_t>(w.size));
  return Status::ok();
}

}  // namespace moecomm
