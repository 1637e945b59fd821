#include "src/bootstrap/tcp_store.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>

#include "src/core/log.hpp"

namespace moecomm {

namespace {

enum class StoreOp : uint8_t { kHello = 1, kSet = 2, kGet = 3 };

// Frames are a u64 length and a body; bodies are built and parsed field by field.
struct Writer {
  std::vector<std::byte> bytes;
  template <typename T>
  void put(T value) {
    const auto* p = reinterpret_cast<const std::byte*>(&value);
    bytes.insert(bytes.end(), p, p + sizeof(T));
  }
  void putBytes(const void* data, size_t n) {
    put<uint64_t>(n);
    const auto* p = static_cast<const std::byte*>(data);
    bytes.insert(bytes.end(), p, p + n);
  }
  void putString(const std::string& s) { putBytes(s.data(), s.size()); }
};

struct Reader {
  const std::byte* data;
  size_t size;
  size_t at = 0;
  bool failed = false;
  template <typename T>
  T get() {
    T value{};
    if (at + sizeof(T) > size) {
      failed = true;
      return value;
    }
    std::memcpy(&value, data + at, sizeof(T));
    at += sizeof(T);
    return value;
  }
  std::vector<std::byte> getBytes() {
    const uint64_t n = get<uint64_t>();
    if (failed || n > size - at) {
      failed = true;
      return {};
    }
    std::vector<std::byte> out(data + at, data + at + n);
    at += n;
    return out;
  }
  std::string getString() {
    auto b = getBytes();
    return {reinterpret_cast<const char*>(b.data()), b.size()};
  }
};

int remainingMs(Deadline deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline.when() -
                                                                    Deadline::Clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1000));
}

// Moves all `n` bytes or fails with the reason; polls so that the deadline holds.
Status transfer(int fd, std::byte* data, size_t n, bool sending, Deadline deadline,
                const std::string& peer) {
  size_t done = 0;
  while (done < n) {
    ssize_t got = sending ? ::send(fd, data + done, n - done, MSG_NOSIGNAL | MSG_DONTWAIT)
                          : ::recv(fd, data + done, n - done, MSG_DONTWAIT);
    if (got > 0) {
      done += static_cast<size_t>(got);
      continue;
    }
    if (got == 0 && !sending) {
      return makeError(StatusCode::kRemoteError,
                       "the store at {} closed the connection (rank 0 exited or failed)", peer);
    }
    if (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      return makeError(StatusCode::kRemoteError, "store connection to {} failed: {}", peer,
                       std::strerror(errno));
    }
    if (deadline.expired()) {
      return makeError(StatusCode::kTimeout, "the store at {} did not answer in time", peer);
    }
    pollfd p{fd, static_cast<short>(sending ? POLLOUT : POLLIN), 0};
    ::poll(&p, 1, std::max(1, remainingMs(deadline)));
  }
  return Status::ok();
}

Status sendFrame(int fd, const std::vector<std::byte>& body, Deadline deadline,
                 const std::string& peer) {
  std::vector<std::byte> frame(sizeof(uint64_t) + body.size());
  const uint64_t n = body.size();
  std::memcpy(frame.data(), &n, sizeof(n));
  if (!body.empty()) std::memcpy(frame.data() + sizeof(n), body.data(), body.size());
  return transfer(fd, frame.data(), frame.size(), true, deadline, peer);
}

Status recvFrame(int fd, std::vector<std::byte>* body, Deadline deadline, const std::string& peer) {
  uint64_t n = 0;
  MOECOMM_RETURN_IF_ERROR(
      transfer(fd, reinterpret_cast<std::byte*>(&n), sizeof(n), false, deadline, peer));
  body->resize(n);
  return transfer(fd, body->data(), n, false, deadline, peer);
}

Status resolve(const std::string& host, int port, bool passive, addrinfo** out) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  const std::string service = std::to_string(port);
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, out);
  if (rc != 0) {
    return makeError(StatusCode::kSystemError,
                     "cannot resolve the store address '{}:{}': {}; set MASTER_ADDR (or "
                     "MOECOMM_MASTER_ADDR) to rank 0's host name or IP address",
                     host, port, ::gai_strerror(rc));
  }
  return Status::ok();
}

void setNoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

// ---------------------------------------------------------------- server

struct TcpStoreServer::Shared {
  std::mutex mutex;
  std::condition_variable cv;
  int connected = 0;
};

Status TcpStoreServer::start(const std::string& host, int port, int world_size,
                             std::unique_ptr<TcpStoreServer>* out) {
  addrinfo* list = nullptr;
  MOECOMM_RETURN_IF_ERROR(resolve(host, port, true, &list));
  int fd = -1;
  std::string last_error = "no address";
  for (addrinfo* a = list; a != nullptr && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, 1024) != 0) {
      last_error = std::strerror(errno);
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(list);
  if (fd < 0) {
    return makeError(StatusCode::kSystemError,
                     "rank 0 cannot serve the store on {}:{}: {}; pick a free MASTER_PORT (or "
                     "MOECOMM_MASTER_PORT) and an address of this host",
                     host, port, last_error);
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  std::unique_ptr<TcpStoreServer> server(new TcpStoreServer());
  server->listen_fd_ = fd;
  server->port_ =
      ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                        : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  server->world_size_ = world_size;
  server->shared_ = std::make_shared<Shared>();
  if (::pipe2(server->wake_fd_, O_CLOEXEC | O_NONBLOCK) != 0) {
    return makeError(StatusCode::kSystemError, "store: pipe failed: {}", std::strerror(errno));
  }
  server->thread_ = std::thread([s = server.get()] { s->serve(); });
  MOECOMM_LOG(LogLevel::kInfo, "rank 0: store serving {} ranks on {}:{}", world_size, host,
              server->port_);
  *out = std::move(server);
  return Status::ok();
}

TcpStoreServer::~TcpStoreServer() {
  if (wake_fd_[1] >= 0) {
    char byte = 1;
    (void)!::write(wake_fd_[1], &byte, 1);
  }
  if (thread_.joinable()) thread_.join();
  for (int fd : {listen_fd_, wake_fd_[0], wake_fd_[1]}) {
    if (fd >= 0) ::close(fd);
  }
}

void TcpStoreServer::drain(Deadline deadline) {
  std::unique_lock<std::mutex> lock(shared_->mutex);
  shared_->cv.wait_until(lock, deadline.when(), [&] { return shared_->connected == 0; });
}

void TcpStoreServer::serve() {
  struct Client {
    int fd;
    int rank = -1;
    std::vector<std::byte> input;
  };
  std::vector<Client> clients;
  std::map<std::string, std::vector<std::byte>> store;
  std::vector<bool> rank_taken(static_cast<size_t>(world_size_), false);

  auto reply = [](Client& c, const Writer& w) {
    // Replies are small and the client is waiting for them; a stuck client only blocks 5 s.
    return sendFrame(c.fd, w.bytes, Deadline::afterMs(5000), "a client").isOk();
  };
  auto handle = [&](Client& c, Reader& r) -> bool {
    const auto op = static_cast<StoreOp>(r.get<uint8_t>());
    Writer w;
    if (op == StoreOp::kHello) {
      const int rank = r.get<int32_t>();
      const int size = r.get<int32_t>();
      std::string error;
      if (size != world_size_) {
        error = text::format("rank {} says the world has {} ranks but rank 0 says {}", rank, size,
                             world_size_);
      } else if (rank < 0 || rank >= world_size_) {
        error = text::format("rank {} is out of range [0, {})", rank, world_size_);
      } else if (rank_taken[rank]) {
        error = text::format("two processes claim rank {}; give each process its own RANK", rank);
      }
      if (error.empty()) {
        rank_taken[rank] = true;
        c.rank = rank;
      }
      w.put<uint8_t>(error.empty() ? 0 : 1);
      w.putString(error);
    } else if (op == StoreOp::kSet) {
      std::string key = r.getString();
      std::vector<std::byte> value = r.getBytes();
      if (r.failed) return false;
      store[key] = std::move(value);
      w.put<uint8_t>(0);
    } else if (op == StoreOp::kGet) {
      const uint32_t n = r.get<uint32_t>();
      w.put<uint32_t>(n);
      for (uint32_t i = 0; i < n && !r.failed; ++i) {
        auto it = store.find(r.getString());
        w.put<uint8_t>(it != store.end());
        if (it != store.end()) w.putBytes(it->second.data(), it->second.size());
      }
    } else {
      return false;
    }
    return !r.failed && reply(c, w);
  };

  bool stopping = false;
  while (!stopping) {
    std::vector<pollfd> fds;
    fds.push_back({wake_fd_[0], POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    for (const Client& c : clients) fds.push_back({c.fd, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), -1) < 0 && errno != EINTR) break;
    if (fds[0].revents != 0) stopping = true;
    if (fds[1].revents & POLLIN) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) {
        setNoDelay(fd);
        clients.push_back(Client{fd, -1, {}});
        std::lock_guard<std::mutex> lock(shared_->mutex);
        ++shared_->connected;
      }
    }
    std::vector<size_t> closed;
    // Only the clients that were polled (a client accepted just now waits for the next round).
    for (size_t i = 0; i + 2 < fds.size(); ++i) {
      if (fds[i + 2].revents == 0) continue;
      Client& c = clients[i];
      std::byte chunk[65536];
      ssize_t got = ::recv(c.fd, chunk, sizeof(chunk), MSG_DONTWAIT);
      bool ok = got > 0 || (got < 0 && (errno == EAGAIN || errno == EINTR));
      if (got > 0) c.input.insert(c.input.end(), chunk, chunk + got);
      while (ok && c.input.size() >= sizeof(uint64_t)) {
        uint64_t n = 0;
        std::memcpy(&n, c.input.data(), sizeof(n));
        if (c.input.size() < sizeof(n) + n) break;
        Reader r{c.input.data() + sizeof(n), n};
        ok = handle(c, r);
        c.input.erase(c.input.begin(), c.input.begin() + static_cast<ptrdiff_t>(sizeof(n) + n));
      }
      if (!ok) closed.push_back(i);
    }
    for (auto it = closed.rbegin(); it != closed.rend(); ++it) {
      ::close(clients[*it].fd);
      clients.erase(clients.begin() + static_cast<ptrdiff_t>(*it));
      std::lock_guard<std::mutex> lock(shared_->mutex);
      --shared_->connected;
      shared_->cv.notify_all();
    }
  }
  for (const Client& c : clients) ::close(c.fd);
}

// ---------------------------------------------------------------- client

Status TcpStoreClient::connect(const std::string& host, int port, int rank, int world_size,
                               Deadline deadline, std::unique_ptr<TcpStoreClient>* out) {
  std::unique_ptr<TcpStoreClient> client(new TcpStoreClient());
  client->address_ = text::format("{}:{}", host, port);
  std::string last_error;
  int backoff_ms = 10;
  while (client->fd_ < 0) {
    addrinfo* list = nullptr;
    MOECOMM_RETURN_IF_ERROR(resolve(host, port, false, &list));
    for (addrinfo* a = list; a != nullptr && client->fd_ < 0; a = a->ai_next) {
      int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) continue;
      if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
        client->fd_ = fd;
      } else {
        last_error = std::strerror(errno);
        ::close(fd);
      }
    }
    ::freeaddrinfo(list);
    if (client->fd_ >= 0) break;
    if (deadline.expired()) {
      return makeError(StatusCode::kTimeout,
                       "rank {}: could not reach the store (rank 0) at {} before the deadline: {}; "
                       "check MASTER_ADDR/MASTER_PORT and that rank 0 is running",
                       rank, client->address_, last_error);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
    backoff_ms = std::min(backoff_ms * 2, 500);
  }
  setNoDelay(client->fd_);

  Writer hello;
  hello.put<uint8_t>(static_cast<uint8_t>(StoreOp::kHello));
  hello.put<int32_t>(rank);
  hello.put<int32_t>(world_size);
  std::vector<std::byte> answer;
  MOECOMM_RETURN_IF_ERROR(client->roundTrip(hello.bytes, &answer, deadline));
  Reader r{answer.data(), answer.size()};
  const uint8_t refused = r.get<uint8_t>();
  if (r.failed || refused != 0) {
    return makeError(StatusCode::kInvalidUsage, "rank {}: the store at {} refused this rank: {}",
                     rank, client->address_, r.getString());
  }
  *out = std::move(client);
  return Status::ok();
}

TcpStoreClient::~TcpStoreClient() {
  if (fd_ >= 0) ::close(fd_);
}

Status TcpStoreClient::roundTrip(const std::vector<std::byte>& request,
                                 std::vector<std::byte>* reply, Deadline deadline) {
  MOECOMM_RETURN_IF_ERROR(sendFrame(fd_, request, deadline, address_));
  return recvFrame(fd_, reply, deadline, address_);
}

Status TcpStoreClient::set(const std::string& key, const void* data, size_t bytes,
                           Deadline deadline) {
  Writer w;
  w.put<uint8_t>(static_cast<uint8_t>(StoreOp::kSet));
  w.putString(key);
  w.putBytes(data, bytes);
  std::vector<std::byte> answer;
  return roundTrip(w.bytes, &answer, deadline);
}

Status TcpStoreClient::tryGet(const std::vector<std::string>& keys,
                              std::vector<std::optional<std::vector<std::byte>>>* values,
                              Deadline deadline) {
  Writer w;
  w.put<uint8_t>(static_cast<uint8_t>(StoreOp::kGet));
  w.put<uint32_t>(static_cast<uint32_t>(keys.size()));
  for (const std::string& k : keys) w.putString(k);
  std::vector<std::byte> answer;
  MOECOMM_RETURN_IF_ERROR(roundTrip(w.bytes, &answer, deadline));
  Reader r{answer.data(), answer.size()};
  const uint32_t n = r.get<uint32_t>();
  values->assign(keys.size(), std::nullopt);
  for (uint32_t i = 0; i < n && i < keys.size() && !r.failed; ++i) {
    if (r.get<uint8_t>() != 0) (*values)[i] = r.getBytes();
  }
  if (r.failed || n != keys.size()) {
    return makeError(StatusCode::kInternalError, "malformed reply from the store at {}", address_);
  }
  return Status::ok();
}

}  // namespace moecomm
