// A small key-value store over TCP, the rendezvous of ranks started without MPI (torchrun's
// MASTER_ADDR/MASTER_PORT). Rank 0 serves it from a thread; every rank, rank 0 included, is a
// client. Keys are written once; readers poll until the keys they need exist, so a reader always
// knows which writers are missing when its deadline passes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "src/core/deadline.hpp"
#include "src/core/status.hpp"

namespace moecomm {

class TcpStoreServer {
 public:
  // Binds host:port (port 0 picks a free one) and starts serving `world_size` clients.
  static Status start(const std::string& host, int port, int world_size,
                      std::unique_ptr<TcpStoreServer>* out);
  ~TcpStoreServer();
  int port() const { return port_; }
  // Waits until every client that connected has disconnected, or the deadline passes.
  void drain(Deadline deadline);

 private:
  TcpStoreServer() = default;
  void serve();

  int listen_fd_ = -1;
  int wake_fd_[2] = {-1, -1};
  int port_ = 0;
  int world_size_ = 0;
  std::thread thread_;
  struct Shared;
  std::shared_ptr<Shared> shared_;
};

class TcpStoreClient {
 public:
  // Connects to host:port, retrying until the deadline (rank 0 may start last), then introduces
  // itself; the server refuses a duplicate rank or a different world size.
  static Status connect(const std::string& host, int port, int rank, int world_size,
                        Deadline deadline, std::unique_ptr<TcpStoreClient>* out);
  ~TcpStoreClient();

  Status set(const std::string& key, const void* data, size_t bytes, Deadline deadline);
  // One round trip: the value of each key, or nullopt for a key not written yet.
  Status tryGet(const std::vector<std::string>& keys,
                std::vector<std::optional<std::vector<std::byte>>>* values, Deadline deadline);
  const std::string& address() const { return address_; }

 private:
  TcpStoreClient() = default;
  Status roundTrip(const std::vector<std::byte>& request, std::vector<std::byte>* reply,
                   Deadline deadline);
  int fd_ = -1;
  std::string address_;
};

}  // namespace moecomm
