// Variable all-to-all bandwidth of each transport against plain MPI_Alltoallv and a memcpy of the
// same bytes, in one run. Launch under mpirun (every rank is one process):
//   mpirun -np 2 build/perf/bench_alltoallv [max_bytes_per_peer]
// Rate = bytes a rank receives per all-to-all (ranks x bytes per peer) / time, in GB/s: the best of
// five interleaved rounds.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <moecomm/mpi.hpp>
#include <string>
#include <vector>

#include "src/group/group_impl.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Buffers {
  std::vector<char> send, recv;
  std::vector<int> counts, displs;
};

Buffers makeBuffers(int n, size_t per_peer) {
  Buffers b;
  b.send.assign(per_peer * n, 1);
  b.recv.assign(per_peer * n, 0);
  b.counts.assign(n, static_cast<int>(per_peer));
  for (int p = 0; p < n; ++p) b.displs.push_back(static_cast<int>(per_peer * p));
  return b;
}

void transportAllToAll(moecomm::Transport& t, Buffers& b, size_t per_peer, uint64_t tag) {
  const int n = t.size(), me = t.rank();
  std::vector<moecomm::Request> requests;
  requests.reserve(2 * n);
  for (int i = 0; i < n; ++i) {
    const int p = (me + i) % n;
    moecomm::Request r;
    if (!t.postRecv(p, b.recv.data() + per_peer * p, per_peer, tag, &r).isOk()) std::abort();
    requests.push_back(r);
  }
  for (int i = 1; i <= n; ++i) {
    const int p = (me + i) % n;
    moecomm::Request r;
    if (!t.postSend(p, b.send.data() + per_peer * p, per_peer, tag, &r).isOk()) std::abort();
    requests.push_back(r);
  }
  moecomm::Status s = t.waitAll(requests, moecomm::Deadline::afterMs(60000), "benchmark");
  if (!s.isOk()) {
    std::fprintf(stderr, "%s\n", s.message().c_str());
    std::abort();
  }
}

// The same exchange as one-sided puts into the peers' registered windows, each followed by a
// zero-byte notice. Peers' blocks go first, so that their notices leave while this rank still
// copies its own. A peer's block alternates between two halves of the window (the double
// buffering that keeps round r + 1 from overwriting a block its receiver has not read yet); a
// rank's own block always lands in the first half, since the rank itself reads it before its next
// round. That keeps the destinations a round touches a quarter smaller, which at 1 MiB per peer
// made the copies 20-25% faster on this project's VM (fewer pages, fewer TLB misses). The engine
// goes further and does not copy a rank's own block at all.
void putAllToAll(moecomm::Transport& t, moecomm::Window& w, Buffers& b, size_t per_peer,
                 uint64_t tag) {
  const int n = t.size(), me = t.rank();
  const size_t half = (tag % 2) * per_peer * n;
  std::vector<moecomm::Request> requests;
  requests.reserve(2 * n);
  for (int p = 0; p < n; ++p) {
    moecomm::Request r;
    if (!t.postRecv(p, nullptr, 0, tag, &r).isOk()) std::abort();
    requests.push_back(r);
  }
  for (int i = 1; i <= n; ++i) {  // peers first, this rank's own block last
    const int p = (me + i) % n;
    moecomm::Request r;
    const size_t at = (p == me ? 0 : half) + per_peer * me;
    if (!t.postPut(w, p, at, b.send.data() + per_peer * p, per_peer, tag, &r).isOk()) {
      std::abort();
    }
    requests.push_back(r);
  }
  if (!t.waitAll(requests, moecomm::Deadline::afterMs(60000), "benchmark").isOk()) std::abort();
}

// Seconds per call: warm up, then time `iters` calls between barriers; the slowest rank counts.
double timeIt(int iters, const std::function<void()>& call) {
  for (int i = 0; i < 3; ++i) call();
  MPI_Barrier(MPI_COMM_WORLD);
  auto start = Clock::now();
  for (int i = 0; i < iters; ++i) call();
  double mine = std::chrono::duration<double>(Clock::now() - start).count() / iters;
  double slowest = 0;
  MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return slowest;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const size_t max_bytes = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : (16u << 20);
  {
    moecomm::World world = moecomm::worldFromMpi(MPI_COMM_WORLD);
    const int n = world.size();
    std::vector<std::pair<std::string, moecomm::Group>> groups;
    for (const char* name : {"ucx", "mpi"}) {
      try {
        groups.emplace_back(
            name, moecomm::Group::create(world, {n, 8, moecomm::DType::kF32, 1, 60000, name}));
      } catch (const moecomm::Error& e) {
        if (world.rank() == 0) std::printf("# %s unavailable: %s\n", name, e.what());
      }
    }
    if (world.rank() == 0) {
      std::printf("# moecomm all-to-all-v, %d ranks; GB/s = ranks x bytes per peer / time\n", n);
      std::printf("%12s", "bytes/peer");
      for (auto& [name, g] : groups) std::printf(" %10s", name.c_str());
      std::printf(" %10s", "ucx-put");
      std::printf(" %14s %10s %9s %9s\n", "MPI_Alltoallv", "memcpy", "put/MPI", "put/copy");
    }
    uint64_t tag = 1;
    for (size_t bytes = 4096; bytes <= max_bytes; bytes *= 4) {
      Buffers b = makeBuffers(n, bytes);
      const int iters = static_cast<int>(std::clamp<size_t>((128u << 20) / (bytes * n), 5, 500));
      const double total = static_cast<double>(bytes) * n;
      // Every method, then every method again, kRounds times, and each method's best round: the
      // host's speed drifts over seconds, and interleaving gives every column the same drift.
      std::vector<std::function<void()>> methods;
      for (auto& [name, g] : groups) {
        moecomm::Transport& t = *g.impl().transport;
        methods.emplace_back([&t, &b, bytes, &tag] { transportAllToAll(t, b, bytes, tag++); });
      }
      std::unique_ptr<moecomm::Window> window;
      const bool have_put = !groups.empty() && groups[0].first == "ucx";
      if (have_put) {
        moecomm::Transport& t = *groups[0].second.impl().transport;
        if (!t.createWindow(2 * bytes * n, moecomm::Deadline::afterMs(60000), &window).isOk()) {
          std::abort();
        }
        methods.emplace_back(
            [&t, &window, &b, bytes, &tag] { putAllToAll(t, *window, b, bytes, tag++); });
      }
      methods.emplace_back([&b] {
        MPI_Alltoallv(b.send.data(), b.counts.data(), b.displs.data(), MPI_BYTE, b.recv.data(),
                      b.counts.data(), b.displs.data(), MPI_BYTE, MPI_COMM_WORLD);
      });
      methods.emplace_back(
          [&b, bytes, n] { std::memcpy(b.recv.data(), b.send.data(), bytes * n); });
      std::vector<double> best(methods.size(), 0.0);
      constexpr int kRounds = 5;
      for (int round = 0; round < kRounds; ++round) {
        for (size_t m = 0; m < methods.size(); ++m) {
          best[m] = std::max(best[m], total / timeIt(iters, methods[m]) / 1e9);
        }
      }
      const std::vector<double> rates(best.begin(),
                                      best.begin() + static_cast<long>(groups.size()));
      const double put = have_put ? best[groups.size()] : 0.0;
      const double mpi = best[best.size() - 2];
      const double copy = best.back();
      if (world.rank() == 0) {
        std::printf("%12zu", bytes);
        for (double r : rates) std::printf(" %10.2f", r);
        std::printf(" %10.2f %14.2f %10.2f %9.2f %9.2f\n", put, mpi, copy, put / mpi, put / copy);
      }
    }
  }
  MPI_Finalize();
  return 0;
}
