#include "transport/local/local_transport.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "src/core/log.hpp"
#include "transport/bulk_copy.hpp"
#include "transport/local/local_fabric.hpp"

namespace moecomm {

namespace {

struct LocalWindow final : Window {
  std::vector<std::byte> storage;
  std::vector<std::byte*> peers;  // every rank's part, rank-ordered
};

class LocalTransport final : public Transport {
 public:
  LocalTransport(LocalFabric* fabric, int rank, int size)
      : fabric_(fabric), rank_(rank), size_(size) {}
  ~LocalTransport() override {
    if (fabric_->references.fetch_sub(1) == 1) delete fabric_;
  }

  const char* name() const override { return "local"; }
  bool supportsPut() const override { return true; }

  // Threads share memory: a window is plain memory whose address every rank learns.
  Status createWindow(size_t bytes, Deadline deadline, std::unique_ptr<Window>* out) override {
    auto window = std::make_unique<LocalWindow>();
    window->storage.resize(std::max<size_t>(bytes, 1));
    window->data = window->storage.data();
    window->bytes = bytes;
    std::vector<std::byte> all;
    MOECOMM_RETURN_IF_ERROR(allGatherBytes(&window->data, sizeof(window->data), &all, deadline));
    window->peers.resize(static_cast<size_t>(size_));
    std::memcpy(window->peers.data(), all.data(), all.size());
    *out = std::move(window);
    return Status::ok();
  }

  Status postPut(Window& window, int peer, size_t offset, const void* src, size_t bytes,
                 uint64_t tag, Request* out) override {
    MOECOMM_RETURN_IF_ERROR(checkPeer(peer));
    if (offset > window.bytes || bytes > window.bytes - offset) {
      return makeError(StatusCode::kInvalidArgument,
                       "put of {} bytes at offset {} overruns the {}-byte window of rank {}", bytes,
                       offset, window.bytes, peer);
    }
    auto& local = static_cast<LocalWindow&>(window);
    if (bytes > 0) bulkCopy(local.peers[peer] + offset, src, bytes);
    // The notice is a message, so the mailbox's lock orders the data before it.
    return postSend(peer, nullptr, 0, tag, out);
  }
  std::byte* mappedPart(Window& window, int peer) override {
    if (peer < 0 || peer >= size_) return nullptr;
    return static_cast<LocalWindow&>(window).peers[peer];
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Status postSend(int peer, const void* data, size_t bytes, uint64_t tag, Request* out) override {
    MOECOMM_RETURN_IF_ERROR(checkPeer(peer));
    auto request = makeRequest(peer, true, tag);
    request->send_data = data;
    request->bytes = bytes;
    LocalMailbox& box = fabric_->mailboxes[peer];
    std::shared_ptr<LocalRequest> match;
    {
      std::lock_guard<std::mutex> lock(box.mutex);
      match = takeMatch(box.recvs, /*sender=*/rank_, tag);
      if (!match) box.sends.push_back(request);
    }
    if (match) deliver(*request, *match);
    *out = request;
    return Status::ok();
  }

  Status postRecv(int peer, void* data, size_t capacity, uint64_t tag, Request* out) override {
    MOECOMM_RETURN_IF_ERROR(checkPeer(peer));
    auto request = makeRequest(peer, false, tag);
    request->recv_data = data;
    request->capacity = capacity;
    LocalMailbox& box = fabric_->mailboxes[rank_];
    std::shared_ptr<LocalRequest> match;
    {
      std::lock_guard<std::mutex> lock(box.mutex);
      match = takeMatch(box.sends, /*sender=*/peer, tag);
      if (!match) box.recvs.push_back(request);
    }
    if (match) deliver(*match, *request);
    *out = request;
    return Status::ok();
  }

  Status progress() override { return Status::ok(); }  // delivery happens when the pair meets

  bool isComplete(const Request& request) override {
    return local(request).state.load(std::memory_order_acquire) == LocalRequest::kDone;
  }

  Status wait(const Request& request, Deadline deadline) override {
    LocalRequest& r = local(request);
    LocalMailbox& box = fabric_->mailboxes[r.owner];
    std::unique_lock<std::mutex> lock(box.mutex);
    bool done = box.cv.wait_until(lock, deadline.when(), [&] {
      return r.state.load(std::memory_order_acquire) == LocalRequest::kDone;
    });
    if (done) return Status::ok();
    return makeError(StatusCode::kTimeout, "rank {}: {} with rank {} timed out", rank_,
                     r.is_send ? "send" : "receive", r.peer);
  }

  void cancel(const Request& request) override {
    LocalRequest& r = local(request);
    LocalMailbox& queue_box = fabric_->mailboxes[r.is_send ? r.peer : rank_];
    {
      std::lock_guard<std::mutex> lock(queue_box.mutex);
      if (r.state.load() == LocalRequest::kPosted) {
        auto& queue = r.is_send ? queue_box.sends : queue_box.recvs;
        queue.erase(std::remove_if(queue.begin(), queue.end(),
                                   [&](const auto& q) { return q.get() == &r; }),
                    queue.end());
        r.state.store(LocalRequest::kCancelled, std::memory_order_release);
        return;
      }
    }
    // Matched: the peer is copying right now and finishes without waiting on anything.
    LocalMailbox& owner_box = fabric_->mailboxes[r.owner];
    std::unique_lock<std::mutex> lock(owner_box.mutex);
    owner_box.cv.wait(lock, [&] { return r.state.load() != LocalRequest::kMatched; });
  }

 private:
  Status checkPeer(int peer) const {
    if (peer < 0 || peer >= size_) {
      return makeError(StatusCode::kInvalidArgument, "rank {}: peer {} is out of range [0, {})",
                       rank_, peer, size_);
    }
    return Status::ok();
  }

  std::shared_ptr<LocalRequest> makeRequest(int peer, bool is_send, uint64_t tag) const {
    auto request = std::make_shared<LocalRequest>();
    request->peer = peer;
    request->is_send = is_send;
    request->owner = rank_;
    request->tag = tag;
    return request;
  }

  static LocalRequest& local(const Request& request) {
    return static_cast<LocalRequest&>(*request);
  }

  // Called with the queue's mailbox locked: removes and returns the first request of the message
  // from `sender` with `tag` (a send posted by it, or a receive that names it), marked as matched.
  static std::shared_ptr<LocalRequest> takeMatch(std::deque<std::shared_ptr<LocalRequest>>& queue,
                                                 int sender, uint64_t tag) {
    for (auto it = queue.begin(); it != queue.end(); ++it) {
      const int from = (*it)->is_send ? (*it)->owner : (*it)->peer;
      if (from == sender && (*it)->tag == tag) {
        std::shared_ptr<LocalRequest> match = *it;
        queue.erase(it);
        match->state.store(LocalRequest::kMatched, std::memory_order_relaxed);
        return match;
      }
    }
    return nullptr;
  }

  void deliver(LocalRequest& send, LocalRequest& recv) {
    size_t n = std::min(send.bytes, recv.capacity);
    if (n > 0) bulkCopy(recv.recv_data, send.send_data, n);
    recv.bytes = n;
    recv.truncated = send.bytes > recv.capacity;
    complete(send);
    complete(recv);
  }

  void complete(LocalRequest& request) {
    LocalMailbox& box = fabric_->mailboxes[request.owner];
    {
      std::lock_guard<std::mutex> lock(box.mutex);
      request.state.store(LocalRequest::kDone, std::memory_order_release);
    }
    box.cv.notify_all();
  }

  LocalFabric* fabric_;
  int rank_;
  int size_;
};

struct FabricAddress {
  int64_t pid;
  uint64_t fabric;
};

}  // namespace

Status createLocalTransport(Bootstrap& bootstrap, Deadline deadline,
                            std::unique_ptr<Transport>* out) {
  const int n = bootstrap.size();
  FabricAddress mine{static_cast<int64_t>(getpid()), 0};
  LocalFabric* created = nullptr;
  if (bootstrap.rank() == 0) {
    created = new LocalFabric(n);
    mine.fabric = reinterpret_cast<uint64_t>(created);
  }
  std::vector<FabricAddress> all(static_cast<size_t>(n));
  Status status = bootstrap.allGather(&mine, all.data(), sizeof(mine), deadline);
  if (!status.isOk()) {
    delete created;  // no peer saw it
    return status;
  }
  for (int r = 0; r < n; ++r) {
    if (all[r].pid != all[0].pid) {
      // Rank 0's fabric has one reference per rank; nobody can use it now, so let rank 0 free it.
      if (created != nullptr) delete created;
      return makeError(
          StatusCode::kInvalidUsage,
          "transport 'local' needs every rank in one process, but rank {} runs in "
          "process {} and rank 0 in {}; use MOECOMM_TRANSPORT=ucx or mpi across processes",
          r, all[r].pid, all[0].pid);
    }
  }
  auto* fabric = reinterpret_cast<LocalFabric*>(all[0].fabric);
  *out = std::make_unique<LocalTransport>(fabric, bootstrap.rank(), n);
  MOECOMM_LOG(LogLevel::kInfo, "rank {}/{}: transport 'local' (threads of process {})",
              bootstrap.rank(), n, all[0].pid);
  return Status::ok();
}

}  // namespace moecomm
