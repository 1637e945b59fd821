// The shared state of one local transport instance: a mailbox per rank. Rank 0 allocates it with
// one reference per rank; the last rank to let go frees it, so no rank frees memory a peer uses.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "transport/transport.hpp"

namespace moecomm {

struct LocalRequest final : RequestBase {
  enum State : int { kPosted = 0, kMatched = 1, kDone = 2, kCancelled = 3 };
  int owner = -1;  // the rank that posted it, whose mailbox wakes its waiter
  uint64_t tag = 0;
  const void* send_data = nullptr;
  void* recv_data = nullptr;
  size_t capacity = 0;
  std::atomic<int> state{kPosted};
};

struct LocalMailbox {
  std::mutex mutex;
  std::condition_variable cv;  // signalled when a request owned by this rank completes
  std::deque<std::shared_ptr<LocalRequest>> sends;  // unmatched sends addressed to this rank
  std::deque<std::shared_ptr<LocalRequest>> recvs;  // unmatched receives posted by this rank
};

struct LocalFabric {
  explicit LocalFabric(int n) : mailboxes(static_cast<size_t>(n)), references(n) {}
  std::vector<LocalMailbox> mailboxes;
  std::atomic<int> references;
};

}  // namespace moecomm
