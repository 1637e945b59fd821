#include "transport/ucx/ucx_transport.hpp"

#include <poll.h>
#include <signal.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <fstream>

#include <cstdio>
#include <cstring>
#include <deque>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "src/core/env.hpp"
#include "src/core/log.hpp"
#include "transport/bulk_copy.hpp"

namespace moecomm {

namespace {

// A UCX tag carries the sender's rank in its low bits, so a receive matches one peer exactly.
constexpr int kRankBits = 20;
constexpr uint64_t kFullMask = ~uint64_t{0};
uint64_t ucxTag(uint64_t tag, int sender) {
  return (tag << kRankBits) | static_cast<uint64_t>(sender);
}

class UcxTransport;

struct UcxRequest final : RequestBase {
  UcxTransport* owner = nullptr;
  void* handle = nullptr;  // UCX's request while in flight
  bool done = false;
  ucs_status_t status = UCS_OK;
  size_t capacity = 0;
  ucp_tag_recv_info_t info{};
  // Messages to this rank itself bypass UCX (its self transport copies in fragments, 3x slower
  // than memcpy) and match here, first posted first matched, as the other transports do.
  bool self = false;
  uint64_t tag = 0;
  const void* send_data = nullptr;
  void* recv_data = nullptr;
  // A put's notice carries the put itself here: both must finish before the request does.
  std::shared_ptr<UcxRequest> companion;
  bool finished() const { return done && (!companion || companion->done); }
};

// Windows are allocated by UCX (ucp_mem_map with ALLOCATE), so on one host they live in shared
// memory that peers map: a put is then a plain memcpy into the peer's pages.
struct UcxWindow final : Window {
  ucp_context_h context = nullptr;
  ucp_mem_h memh = nullptr;
  std::vector<ucp_rkey_h> rkeys;
  std::vector<uint64_t> remote;    // every rank's base address
  std::vector<std::byte*> direct;  // a peer's part mapped here, or nullptr
  ~UcxWindow() override {
    for (ucp_rkey_h k : rkeys) {
      if (k != nullptr) ucp_rkey_destroy(k);
    }
    if (memh != nullptr) ucp_mem_unmap(context, memh);
  }
};

std::string describe(ucs_status_t status) {
  return ucs_status_string(status);
}

// What each rank publishes next to its worker address.
struct PeerInfo {
  int64_t pid;
  char host[120];  // hostname, boot id and network namespace: equal means one kernel and network
};

std::string hostKey() {
  char name[64] = {};
  ::gethostname(name, sizeof(name) - 1);
  std::string boot;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
  char netns[64] = {};
  if (::readlink("/proc/self/ns/net", netns, sizeof(netns) - 1) < 0) netns[0] = '\0';
  return std::string(name) + "/" + boot + "/" + netns;
}

class UcxTransport final : public Transport {
 public:
  UcxTransport(int rank, int size) : rank_(rank), size_(size), failed_(static_cast<size_t>(size)) {}
  ~UcxTransport() override { shutdown(); }

  const char* name() const override { return "ucx"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Status init(Bootstrap& bootstrap, Deadline deadline);
  Status postSend(int peer, const void* data, size_t bytes, uint64_t tag, Request* out) override;
  Status postRecv(int peer, void* data, size_t capacity, uint64_t tag, Request* out) override;
  Status progress() override {
    ucp_worker_progress(worker_);
    return Status::ok();
  }
  bool isComplete(const Request& request) override {
    return static_cast<UcxRequest&>(*request).finished();
  }
  bool supportsPut() const override { return true; }
  Status createWindow(size_t bytes, Deadline deadline, std::unique_ptr<Window>* out) override;
  std::byte* mappedPart(Window& window, int peer) override {
    auto& w = static_cast<UcxWindow&>(window);
    return peer >= 0 && peer < static_cast<int>(w.direct.size()) ? w.direct[peer] : nullptr;
  }
  Status postPut(Window& window, int peer, size_t offset, const void* src, size_t bytes,
                 uint64_t tag, Request* out) override;
  Status wait(const Request& request, Deadline deadline) override;
  void cancel(const Request& request) override;

  // UCX callbacks.
  void complete(UcxRequest* r, ucs_status_t status) {
    r->status = status;
    r->done = true;
    r->handle = nullptr;
    inflight_.erase(r);  // may free r: nothing may follow
  }
  void peerFailed(ucp_ep_h ep, ucs_status_t status);

 private:
  Status checkPeer(int peer, const char* what) const;
  Status track(const std::shared_ptr<UcxRequest>& r, ucs_status_ptr_t result, Request* out);
  struct Idle {
    int polls = 0;
    std::chrono::steady_clock::time_point since;
  };
  void idleWait(Idle* idle);
  void logChosenTransports();
  void shutdown();
  void checkLiveness();
  Status postSelf(const std::shared_ptr<UcxRequest>& r, Request* out);

  int rank_;
  int size_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int event_fd_ = -1;
  std::vector<ucp_ep_h> endpoints_;
  std::vector<std::string> failed_;  // per peer: why its endpoint failed, "" while healthy
  // Peers on this host talk over shared memory, which in UCX 1.13 has no peer-failure handler;
  // their liveness is checked by pid instead. Peers elsewhere get UCX's peer error handling.
  std::vector<int64_t> local_pid_;  // per peer: its pid when on this host, else 0
  // How long an idle wait polls before it sleeps: long enough to catch a peer that is a few
  // microseconds behind when this host has a core per rank, zero when ranks share cores.
  std::chrono::nanoseconds spin_{0};
  Deadline next_liveness_check_ = Deadline::afterMs(0);
  std::unordered_map<UcxRequest*, std::shared_ptr<UcxRequest>> inflight_;
  std::deque<std::shared_ptr<UcxRequest>> self_sends_, self_recvs_;  // unmatched, to ourselves
};

void onSendDone(void* request, ucs_status_t status, void* user_data) {
  auto* r = static_cast<UcxRequest*>(user_data);
  ucp_request_free(request);
  r->owner->complete(r, status);
}

void onRecvDone(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info,
                void* user_data) {
  auto* r = static_cast<UcxRequest*>(user_data);
  if (info != nullptr) r->info = *info;
  ucp_request_free(request);
  r->owner->complete(r, status);
}

void onEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  static_cast<UcxTransport*>(arg)->peerFailed(ep, status);
}

Status ucxError(const char* what, ucs_status_t status) {
  return makeError(StatusCode::kSystemError,
                   "UCX {} failed: {}; UCX_LOG_LEVEL=info shows why, UCX_TLS limits transports",
                   what, describe(status));
}

Status UcxTransport::init(Bootstrap& bootstrap, Deadline deadline) {
  ucp_config_t* config = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
  if (s != UCS_OK) return ucxError("ucp_config_read", s);
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_ESTIMATED_NUM_EPS;
  params.features = UCP_FEATURE_TAG | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  params.estimated_num_eps = static_cast<size_t>(size_);
  s = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  if (s != UCS_OK) return ucxError("ucp_init", s);

  ucp_worker_params_t wparams{};
  wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wparams.thread_mode = UCS_THREAD_MODE_SINGLE;
  s = ucp_worker_create(context_, &wparams, &worker_);
  if (s != UCS_OK) return ucxError("ucp_worker_create", s);
  if (ucp_worker_get_efd(worker_, &event_fd_) != UCS_OK) event_fd_ = -1;

  ucp_address_t* address = nullptr;
  size_t address_bytes = 0;
  s = ucp_worker_get_address(worker_, &address, &address_bytes);
  if (s != UCS_OK) return ucxError("ucp_worker_get_address", s);
  // Addresses differ in length: gather the longest, then each one padded to it behind the
  // rank's PeerInfo.
  uint64_t mine = address_bytes;
  std::vector<uint64_t> lengths(static_cast<size_t>(size_));
  Status gathered = bootstrap.allGather(&mine, lengths.data(), sizeof(mine), deadline);
  size_t longest = 0;
  for (uint64_t l : lengths) longest = std::max<size_t>(longest, l);
  const size_t record = sizeof(PeerInfo) + longest;
  std::vector<std::byte> padded(record), all(record * static_cast<size_t>(size_));
  PeerInfo info{};
  info.pid = static_cast<int64_t>(::getpid());
  std::snprintf(info.host, sizeof(info.host), "%s", hostKey().c_str());
  std::memcpy(padded.data(), &info, sizeof(info));
  std::memcpy(padded.data() + sizeof(info), address, address_bytes);
  ucp_worker_release_address(worker_, address);
  if (gathered.isOk()) gathered = bootstrap.allGather(padded.data(), all.data(), record, deadline);
  MOECOMM_RETURN_IF_ERROR(gathered);

  endpoints_.assign(static_cast<size_t>(size_), nullptr);
  local_pid_.assign(static_cast<size_t>(size_), 0);
  int remote_peers = 0;
  for (int p = 0; p < size_; ++p) {
    PeerInfo peer{};
    std::memcpy(&peer, all.data() + record * p, sizeof(peer));
    const bool same_host = std::strncmp(peer.host, info.host, sizeof(info.host)) == 0;
    if (same_host && peer.pid != info.pid) local_pid_[p] = peer.pid;
    remote_peers += !same_host;
  }
  const int host_ranks = size_ - remote_peers;
  const auto cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  spin_ = std::chrono::microseconds(host_ranks <= cores ? envInt("MOECOMM_UCX_SPIN_US", 50) : 0);
  for (int p = 0; p < size_; ++p) {
    PeerInfo peer{};
    std::memcpy(&peer, all.data() + record * p, sizeof(peer));
    const bool same_host = std::strncmp(peer.host, info.host, sizeof(info.host)) == 0;
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep.address = reinterpret_cast<const ucp_address_t*>(all.data() + record * p + sizeof(PeerInfo));
    ep.err_mode = same_host ? UCP_ERR_HANDLING_MODE_NONE : UCP_ERR_HANDLING_MODE_PEER;
    if (!same_host) {
      ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
      ep.err_handler.cb = onEndpointError;
      ep.err_handler.arg = this;
    }
    s = ucp_ep_create(worker_, &ep, &endpoints_[p]);
    if (s != UCS_OK) {
      endpoints_[p] = nullptr;
      return makeError(StatusCode::kSystemError, "rank {}: UCX cannot reach rank {}: {}", rank_, p,
                       describe(s));
    }
  }
  MOECOMM_LOG(LogLevel::kDebug, "rank {}: {} peer(s) on other hosts (UCX peer error handling)",
              rank_, remote_peers);
  // Creating an endpoint attaches the peer's shared-memory FIFO, so no rank may tear its
  // worker down (say, after a quick first exchange) until every rank has connected.
  MOECOMM_RETURN_IF_ERROR(bootstrap.barrier(deadline));
  logChosenTransports();
  return Status::ok();
}

void UcxTransport::logChosenTransports() {
  if (logLevel() < LogLevel::kInfo) return;
  const int peer = (rank_ + 1) % size_;
  char* text = nullptr;
  size_t length = 0;
  FILE* stream = open_memstream(&text, &length);
  if (stream == nullptr) return;
  ucp_ep_print_info(endpoints_[peer], stream);
  std::fclose(stream);
  std::string lanes;
  for (const char* line = text; line != nullptr && *line != '\0';) {
    const char* end = std::strchr(line, '\n');
    std::string l(line, end ? static_cast<size_t>(end - line) : std::strlen(line));
    if (l.find("lane[") != std::string::npos) lanes += "\n    " + l;
    line = end ? end + 1 : nullptr;
  }
  std::free(text);
  MOECOMM_LOG(LogLevel::kInfo, "rank {}/{}: transport 'ucx' {}, lanes to rank {}:{}", rank_, size_,
              ucp_get_version_string(), peer, lanes);
}

void UcxTransport::peerFailed(ucp_ep_h ep, ucs_status_t status) {
  for (int p = 0; p < size_; ++p) {
    if (endpoints_[p] != ep) continue;
    failed_[p] = describe(status);
    MOECOMM_LOG(LogLevel::kWarn, "rank {}: UCX reports rank {} failed: {}", rank_, p, failed_[p]);
  }
}

// At most every 100 ms while waiting: a peer process on this host that no longer exists has died.
void UcxTransport::checkLiveness() {
  if (!next_liveness_check_.expired()) return;
  next_liveness_check_ = Deadline::afterMs(100);
  for (int p = 0; p < size_; ++p) {
    if (local_pid_[p] == 0 || !failed_[p].empty()) continue;
    if (::kill(static_cast<pid_t>(local_pid_[p]), 0) != 0 && errno == ESRCH) {
      failed_[p] = text::format("its process {} on this host has exited", local_pid_[p]);
      MOECOMM_LOG(LogLevel::kWarn, "rank {}: rank {} died: {}", rank_, p, failed_[p]);
    }
  }
}

Status UcxTransport::checkPeer(int peer, const char* what) const {
  if (peer < 0 || peer >= size_) {
    return makeError(StatusCode::kInvalidArgument, "{} to rank {} out of range [0, {})", what, peer,
                     size_);
  }
  if (!failed_[peer].empty()) {
    return makeError(StatusCode::kRemoteError,
                     "rank {}: rank {} is unreachable (UCX: {}); it died or its network failed",
                     rank_, peer, failed_[peer]);
  }
  return Status::ok();
}

Status UcxTransport::track(const std::shared_ptr<UcxRequest>& r, ucs_status_ptr_t result,
                           Request* out) {
  if (UCS_PTR_IS_ERR(result)) {
    return makeError(StatusCode::kRemoteError, "rank {}: UCX {} with rank {} failed: {}", rank_,
                     r->is_send ? "send" : "receive", r->peer, describe(UCS_PTR_STATUS(result)));
  }
  if (result == nullptr) {
    r->done = true;  // completed in place; the callback will not run
  } else {
    r->handle = result;
    inflight_[r.get()] = r;
  }
  *out = r;
  return Status::ok();
}

Status UcxTransport::postSelf(const std::shared_ptr<UcxRequest>& r, Request* out) {
  auto& others = r->is_send ? self_recvs_ : self_sends_;
  auto match =
      std::find_if(others.begin(), others.end(), [&](const auto& o) { return o->tag == r->tag; });
  if (match == others.end()) {
    (r->is_send ? self_sends_ : self_recvs_).push_back(r);
  } else {
    UcxRequest& send = r->is_send ? *r : **match;
    UcxRequest& recv = r->is_send ? **match : *r;
    const size_t landed = std::min(send.bytes, recv.capacity);
    if (landed > 0) bulkCopy(recv.recv_data, send.send_data, landed);
    recv.bytes = landed;
    recv.truncated = send.bytes > recv.capacity;
    send.done = recv.done = true;
    others.erase(match);
  }
  *out = r;
  return Status::ok();
}

Status UcxTransport::postSend(int peer, const void* data, size_t bytes, uint64_t tag,
                              Request* out) {
  MOECOMM_RETURN_IF_ERROR(checkPeer(peer, "send"));
  auto r = std::make_shared<UcxRequest>();
  r->owner = this;
  r->peer = peer;
  r->is_send = true;
  r->bytes = bytes;
  if (peer == rank_) {
    r->self = true;
    r->tag = tag;
    r->send_data = data;
    return postSelf(r, out);
  }
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = onSendDone;
  param.user_data = r.get();
  return track(r, ucp_tag_send_nbx(endpoints_[peer], data, bytes, ucxTag(tag, rank_), &param), out);
}

Status UcxTransport::postRecv(int peer, void* data, size_t capacity, uint64_t tag, Request* out) {
  MOECOMM_RETURN_IF_ERROR(checkPeer(peer, "receive"));
  auto r = std::make_shared<UcxRequest>();
  r->owner = this;
  r->peer = peer;
  r->capacity = capacity;
  if (peer == rank_) {
    r->self = true;
    r->tag = tag;
    r->recv_data = data;
    return postSelf(r, out);
  }
  ucp_request_param_t param{};
  // Always complete through the callback: UCX 1.13 leaves recv_info unset on some immediate
  // completions, and the callback is the one place the received length is reliable.
  param.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
  param.cb.recv = onRecvDone;
  param.user_data = r.get();
  return track(r, ucp_tag_recv_nbx(worker_, data, capacity, ucxTag(tag, peer), kFullMask, &param),
               out);
}

// Between polls, sleep on the worker's event fd so that idle ranks leave the cores to busy ones
// (4 ranks on 2 cores must not spin against each other). A wait first polls MOECOMM_UCX_SPINS
// times and, with a core per rank, for up to spin_: waking from the fd costs tens of
// microseconds, as much as a megabyte's copy.
void UcxTransport::idleWait(Idle* idle) {
  static const int spins = static_cast<int>(envInt("MOECOMM_UCX_SPINS", 16));
  if (idle->polls++ == 0) idle->since = std::chrono::steady_clock::now();
  if (idle->polls < spins) return;
  if (spin_.count() > 0 && std::chrono::steady_clock::now() - idle->since < spin_) return;
  if (event_fd_ >= 0) {
    ucs_status_t s = ucp_worker_arm(worker_);
    if (s == UCS_ERR_BUSY) return;
    if (s == UCS_OK) {
      pollfd p{event_fd_, POLLIN, 0};
      ::poll(&p, 1, 1);
      return;
    }
  }
  std::this_thread::sleep_for(std::chrono::microseconds(50));
}

Status UcxTransport::wait(const Request& request, Deadline deadline) {
  auto& r = static_cast<UcxRequest&>(*request);
  Idle idle;
  while (!r.finished()) {
    if (ucp_worker_progress(worker_) != 0) {
      idle.polls = 0;
      continue;
    }
    if (r.finished()) break;
    checkLiveness();
    if (!failed_[r.peer].empty()) return checkPeer(r.peer, r.is_send ? "send" : "receive");
    if (deadline.expired()) {
      return makeError(StatusCode::kTimeout, "rank {}: UCX {} with rank {} timed out", rank_,
                       r.is_send ? "send" : "receive", r.peer);
    }
    idleWait(&idle);
  }
  if (r.status == UCS_ERR_MESSAGE_TRUNCATED) {
    r.truncated = true;
    r.bytes = r.capacity;
    return Status::ok();
  }
  if (r.status == UCS_OK && r.companion) r.status = r.companion->status;
  if (r.status != UCS_OK) {
    return makeError(StatusCode::kRemoteError, "rank {}: UCX {} with rank {} failed: {}", rank_,
                     r.is_send ? "send" : "receive", r.peer, describe(r.status));
  }
  if (!r.is_send && !r.self) r.bytes = r.info.length;
  return Status::ok();
}

void UcxTransport::cancel(const Request& request) {
  auto& r = static_cast<UcxRequest&>(*request);
  if (r.done) return;
  if (r.self) {
    auto& queue = r.is_send ? self_sends_ : self_recvs_;
    std::erase_if(queue, [&](const auto& o) { return o.get() == &r; });
    r.done = true;
    r.status = UCS_ERR_CANCELED;
    return;
  }
  if (r.handle == nullptr) return;
  ucp_request_cancel(worker_, r.handle);
  for (int i = 0; i < 1000 && !r.done; ++i) ucp_worker_progress(worker_);
  if (r.done) return;
  // UCX cannot withdraw a send that the peer has not taken; closing the endpoint completes it
  // with an error, so the buffer is never read afterwards. The peer is then unreachable.
  const int peer = r.peer;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  ucs_status_ptr_t closing = ucp_ep_close_nbx(endpoints_[peer], &param);
  endpoints_[peer] = nullptr;
  if (failed_[peer].empty()) failed_[peer] = "endpoint closed after a timeout";
  while (UCS_PTR_IS_PTR(closing) && ucp_request_check_status(closing) == UCS_INPROGRESS) {
    ucp_worker_progress(worker_);
  }
  if (UCS_PTR_IS_PTR(closing)) ucp_request_free(closing);
}

Status UcxTransport::createWindow(size_t bytes, Deadline deadline, std::unique_ptr<Window>* out) {
  auto window = std::make_unique<UcxWindow>();
  window->context = context_;
  ucp_mem_map_params_t map{};
  map.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                   UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  map.address = nullptr;
  map.length = std::max<size_t>(bytes, 1);
  map.flags = UCP_MEM_MAP_ALLOCATE;
  ucs_status_t s = ucp_mem_map(context_, &map, &window->memh);
  if (s != UCS_OK) return ucxError("ucp_mem_map (window)", s);
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
  s = ucp_mem_query(window->memh, &attr);
  if (s != UCS_OK) return ucxError("ucp_mem_query", s);
  window->data = static_cast<std::byte*>(attr.address);
  window->bytes = bytes;

  void* packed = nullptr;
  size_t packed_bytes = 0;
  s = ucp_rkey_pack(context_, window->memh, &packed, &packed_bytes);
  if (s != UCS_OK) return ucxError("ucp_rkey_pack", s);
  uint64_t mine = packed_bytes;
  std::vector<std::byte> lengths;
  Status gathered = allGatherBytes(&mine, sizeof(mine), &lengths, deadline);
  size_t longest = 0;
  for (int p = 0; gathered.isOk() && p < size_; ++p) {
    uint64_t l = 0;
    std::memcpy(&l, lengths.data() + sizeof(l) * p, sizeof(l));
    longest = std::max<size_t>(longest, l);
  }
  const size_t record = sizeof(uint64_t) + longest;
  std::vector<std::byte> own(record), all;
  const uint64_t base = reinterpret_cast<uint64_t>(window->data);
  std::memcpy(own.data(), &base, sizeof(base));
  std::memcpy(own.data() + sizeof(base), packed, packed_bytes);
  ucp_rkey_buffer_release(packed);
  if (gathered.isOk()) gathered = allGatherBytes(own.data(), record, &all, deadline);
  MOECOMM_RETURN_IF_ERROR(gathered);

  window->rkeys.assign(static_cast<size_t>(size_), nullptr);
  window->remote.assign(static_cast<size_t>(size_), 0);
  window->direct.assign(static_cast<size_t>(size_), nullptr);
  int mapped = 0;
  for (int p = 0; p < size_; ++p) {
    const std::byte* rec = all.data() + record * p;
    std::memcpy(&window->remote[p], rec, sizeof(uint64_t));
    if (p == rank_) {
      window->direct[p] = window->data;
      continue;
    }
    s = ucp_ep_rkey_unpack(endpoints_[p], rec + sizeof(uint64_t), &window->rkeys[p]);
    if (s != UCS_OK) return ucxError("ucp_ep_rkey_unpack", s);
    void* local = nullptr;
    // MOECOMM_UCX_DIRECT_PUTS=0 sends every put through UCX (ucp_put_nbx), as between hosts.
    static const bool direct = envInt("MOECOMM_UCX_DIRECT_PUTS", 1) != 0;
    if (direct && ucp_rkey_ptr(window->rkeys[p], window->remote[p], &local) == UCS_OK) {
      window->direct[p] = static_cast<std::byte*>(local);
      ++mapped;
    }
  }
  MOECOMM_LOG(LogLevel::kDebug, "rank {}: {}-byte window, {} of {} peers mapped for direct puts",
              rank_, bytes, mapped, size_ - 1);
  *out = std::move(window);
  return Status::ok();
}

Status UcxTransport::postPut(Window& window, int peer, size_t offset, const void* src, size_t bytes,
                             uint64_t tag, Request* out) {
  MOECOMM_RETURN_IF_ERROR(checkPeer(peer, "put"));
  if (offset > window.bytes || bytes > window.bytes - offset) {
    return makeError(StatusCode::kInvalidArgument,
                     "put of {} bytes at offset {} overruns the {}-byte window of rank {}", bytes,
                     offset, window.bytes, peer);
  }
  auto& w = static_cast<UcxWindow&>(window);
  if (w.direct[peer] != nullptr) {
    // Mapped memory: the copy is done before the notice is posted, and the notice travels
    // through UCX's shared-memory queue, whose atomics order it after the data.
    if (bytes > 0) bulkCopy(w.direct[peer] + offset, src, bytes);
    return postSend(peer, nullptr, 0, tag, out);
  }
  auto put = std::make_shared<UcxRequest>();
  put->owner = this;
  put->peer = peer;
  put->is_send = true;
  put->bytes = bytes;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = onSendDone;
  param.user_data = put.get();
  Request tracked;
  MOECOMM_RETURN_IF_ERROR(track(
      put,
      ucp_put_nbx(endpoints_[peer], src, bytes, w.remote[peer] + offset, w.rkeys[peer], &param),
      &tracked));
  // The fence orders the notice after the put at the target.
  ucp_worker_fence(worker_);
  Request notice;
  MOECOMM_RETURN_IF_ERROR(postSend(peer, nullptr, 0, tag, &notice));
  static_cast<UcxRequest&>(*notice).companion = put;
  *out = notice;
  return Status::ok();
}

void UcxTransport::shutdown() {
  if (worker_ != nullptr) {
    for (auto& [raw, r] : std::unordered_map<UcxRequest*, std::shared_ptr<UcxRequest>>(inflight_)) {
      if (!r->done && r->handle != nullptr && !r->is_send) ucp_request_cancel(worker_, r->handle);
    }
    // Flush-close healthy endpoints (bounded), force-close failed ones.
    std::vector<ucs_status_ptr_t> closing;
    for (int p = 0; p < size_ && p < static_cast<int>(endpoints_.size()); ++p) {
      if (endpoints_[p] == nullptr) continue;
      ucp_request_param_t param{};
      param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      param.flags = failed_[p].empty() ? 0 : UCP_EP_CLOSE_FLAG_FORCE;
      closing.push_back(ucp_ep_close_nbx(endpoints_[p], &param));
    }
    Deadline deadline = Deadline::afterMs(2000);
    for (ucs_status_ptr_t c : closing) {
      if (!UCS_PTR_IS_PTR(c)) continue;
      while (ucp_request_check_status(c) == UCS_INPROGRESS && !deadline.expired()) {
        if (ucp_worker_progress(worker_) == 0) std::this_thread::yield();
      }
      ucp_request_free(c);
    }
    // The worker's destruction ends whatever is still in flight (its callbacks may run, so the
    // requests stay alive until after it).
    ucp_worker_destroy(worker_);
    worker_ = nullptr;
    for (auto& [raw, r] : inflight_) r->done = true;
    inflight_.clear();
  }
  if (context_ != nullptr) {
    ucp_cleanup(context_);
    context_ = nullptr;
  }
}

}  // namespace

Status createUcxTransport(Bootstrap& bootstrap, Deadline deadline,
                          std::unique_ptr<Transport>* out) {
  if (bootstrap.size() > (1 << kRankBits)) {
    return makeError(StatusCode::kInvalidArgument, "transport 'ucx' supports up to {} ranks",
                     1 << kRankBits);
  }
  auto transport = std::make_unique<UcxTransport>(bootstrap.rank(), bootstrap.size());
  MOECOMM_RETURN_IF_ERROR(transport->init(bootstrap, deadline));
  *out = std::move(transport);
  return Status::ok();
}

}  // namespace moecomm
