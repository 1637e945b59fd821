#include "perf/cli/alltoall.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>

#include "perf/cli/report.hpp"
#include "src/group/group_impl.hpp"
#ifdef MOECOMM_HAVE_MPI
#include <mpi.h>
#endif

namespace moecomm::perf {

namespace {

using Clock = std::chrono::steady_clock;

// The byte that rank `src` sends rank `dst` at `index` in iteration `iter` of a checked exchange.
uint8_t patternByte(int src, int dst, size_t index, int iter) {
  uint32_t x = static_cast<uint32_t>(index) * 2654435761u;
  x ^= static_cast<uint32_t>(src) * 0x9e3779b9u + static_cast<uint32_t>(dst) * 0x85ebca6bu +
       static_cast<uint32_t>(iter) * 0xc2b2ae35u;
  x ^= x >> 15;
  return static_cast<uint8_t>(x >> 8);
}

struct Exchange {
  Transport& transport;
  size_t per_peer;
  std::vector<uint8_t> send, recv;
  std::unique_ptr<Window> window;  // put mode
  uint64_t tag = 1;

  // Where a put round writes the block from `src` (to its receiver) at tag t: peers' blocks
  // alternate between the window's two halves, so that a round never overwrites one its receiver
  // has not read; a rank's own block stays in the first half, since the rank reads it itself
  // before its next round (a smaller footprint: bench_alltoallv measured the difference).
  size_t putOffset(int src, int dst, uint64_t t) const {
    const size_t half = src == dst ? 0 : (t % 2) * per_peer * transport.size();
    return half + per_peer * src;
  }

  // The received block from `src`: in recv (tag) or in the window, where the last round put it.
  const uint8_t* received(int src) const {
    if (!window) return recv.data() + per_peer * src;
    return reinterpret_cast<const uint8_t*>(window->data) +
           putOffset(src, transport.rank(), tag - 1);
  }
  uint8_t* receivedMutable(int src) { return const_cast<uint8_t*>(received(src)); }

  void run(Deadline deadline) {
    const int n = transport.size(), me = transport.rank();
    const uint64_t t = tag++;
    std::vector<Request> requests;
    requests.reserve(static_cast<size_t>(2 * n));
    Request r;
    // Posts through `status` (which filled r), then keeps r.
    auto post = [&](const Status& status) {
      throwIfError(status);
      requests.push_back(r);
    };
    for (int i = 0; i < n; ++i) {
      const int p = (me + i) % n;
      if (window) {
        post(transport.postRecv(p, nullptr, 0, t, &r));
      } else {
        post(transport.postRecv(p, recv.data() + per_peer * p, per_peer, t, &r));
      }
    }
    for (int i = 0; i < n; ++i) {
      const int p = (me + i) % n;
      if (window) {
        post(transport.postPut(*window, p, putOffset(me, p, t), send.data() + per_peer * p,
                               per_peer, t, &r));
      } else {
        post(transport.postSend(p, send.data() + per_peer * p, per_peer, t, &r));
      }
    }
    throwIfError(transport.waitAll(requests, deadline, "moecomm-perf alltoall"));
  }
};

std::vector<uint64_t> sweepSizes(const AlltoallOptions& o, int ranks, size_t elem) {
  std::vector<uint64_t> sizes;
  const uint64_t unit = static_cast<uint64_t>(ranks) * elem;
  for (uint64_t size = o.min_bytes; size <= o.max_bytes;) {
    const uint64_t rounded = size / unit * unit;
    if (sizes.empty() || sizes.back() != rounded) sizes.push_back(rounded);
    const uint64_t next =
        o.step_bytes > 0 ? size + o.step_bytes : static_cast<uint64_t>(std::ceil(size * o.factor));
    if (next <= size) break;
    size = next;
  }
  return sizes;
}

const char* const kAverageNames[] = {"rank 0", "average", "minimum", "maximum"};

double combine(const std::vector<double>& all, int how) {
  if (how == 0) return all[0];
  if (how == 2) return *std::min_element(all.begin(), all.end());
  if (how == 3) return *std::max_element(all.begin(), all.end());
  double sum = 0;
  for (double v : all) sum += v;
  return sum / static_cast<double>(all.size());
}

}  // namespace

int runAlltoall(const AlltoallOptions& o, RankContext& context) {
  const size_t elem = dtypeBytes(o.dtype);
  const int64_t timeout_ms = static_cast<int64_t>(o.timeout_s * 1000);
  Group group = context.makeGroup({context.size(), 8, DType::kF32, 1, timeout_ms, o.transport});
  Transport& transport = *group.impl().transport;
  const int n = group.size(), me = group.rank();
  const bool root = me == 0;
  if (o.mode == "put" && !transport.supportsPut()) {
    if (root)
      std::fprintf(stderr, "moecomm-perf: --mode put needs a transport with puts; '%s' has none\n",
                   transport.name());
    return 2;
  }
  if (o.baseline == "mpi" && !context.mpiWorld()) {
    if (root)
      std::fprintf(stderr, "moecomm-perf: --baseline mpi needs a run started by mpirun or srun\n");
    return 2;
  }
  const bool baseline = o.baseline == "mpi";
  const std::vector<uint64_t> sizes = sweepSizes(o, n, elem);

  // The header, as nccl-tests prints it, with one line per rank.
  std::vector<double> pids = context.gather(group, {static_cast<double>(getpid())});
  if (root) {
    std::printf(
        "# moecomm-perf alltoall: minBytes %llu maxBytes %llu step: %s warmup iters: %d "
        "iters: %d validation: %d mode: %s\n#\n# Using ranks (launch: %s, transport: %s)\n",
        static_cast<unsigned long long>(o.min_bytes), static_cast<unsigned long long>(o.max_bytes),
        o.step_bytes > 0 ? (std::to_string(o.step_bytes) + "(bytes)").c_str()
                         : (std::to_string(o.factor) + "(factor)").c_str(),
        o.warmup, o.iters, o.check > 0, o.mode.c_str(), context.launch(), transport.name());
    std::printf("#  Rank 0 on host %s\n", hostName().c_str());
    for (int r = 0; r < n; ++r) {
      std::printf("#  Rank %2d Pid %7d device cpu\n", r, static_cast<int>(pids[r]));
    }
    std::printf(
        "#\n# size: one rank's whole send buffer; count: %s elements per peer; "
        "GB = 1e9 B; busbw = algbw * (n-1)/n; time: %s over ranks\n",
        o.dtype.c_str(), kAverageNames[o.average]);
    std::printf("#%13s %12s %9s %10s %8s %8s %7s", "size", "count", "type", "time", "algbw",
                "busbw", "#wrong");
    if (baseline) std::printf(" %10s %7s", "mpi time", "ratio");
    std::printf("\n#%13s %12s %9s %10s %8s %8s %7s", "(B)", "(elements)", "", "(us)", "(GB/s)",
                "(GB/s)", "");
    if (baseline) std::printf(" %10s %7s", "(us)", "");
    std::printf("\n");
  }

  nlohmann::json rows = nlohmann::json::array();
  double busbw_sum = 0;
  int rows_counted = 0;
  int64_t wrong_total = 0;
  Progress progress(root);
  size_t step = 0;
  for (int cycle = 0; cycle < o.repeats; ++cycle) {
    for (uint64_t size : sizes) {
      progress.update(++step, sizes.size() * o.repeats, std::to_string(size) + " B");
      const size_t per_peer = size / n;
      Exchange ex{transport, per_peer, std::vector<uint8_t>(size, 1), std::vector<uint8_t>(size, 0),
                  {},        1};
      if (o.mode == "put") {
        throwIfError(transport.createWindow(2 * size, Deadline::afterMs(timeout_ms), &ex.window));
      }
      auto deadline = [&] { return Deadline::afterMs(timeout_ms); };
      for (int i = 0; i < o.warmup; ++i) ex.run(deadline());
      group.impl().bootstrap->barrier(deadline()).isOk();
      auto start = Clock::now();
      for (int i = 0; i < o.iters; ++i) ex.run(deadline());
      const double mine_us =
          std::chrono::duration<double, std::micro>(Clock::now() - start).count() / o.iters;

      // Checked iterations: fresh patterns, every received element compared.
      int64_t wrong = 0;
      for (int c = 0; c < o.check; ++c) {
        for (int p = 0; p < n; ++p) {
          for (size_t i = 0; i < per_peer; ++i)
            ex.send[per_peer * p + i] = patternByte(me, p, i, c + 1);
        }
        ex.run(deadline());
        if (o.corrupt && root && c == 0 && per_peer > 0)
          ex.receivedMutable(n - 1)[per_peer / 2] ^= 0x5a;
        for (int src = 0; src < n; ++src) {
          const uint8_t* got = ex.received(src);
          for (size_t e = 0; e < per_peer / elem; ++e) {
            bool bad = false;
            for (size_t b = 0; b < elem; ++b) {
              bad = bad || got[e * elem + b] != patternByte(src, me, e * elem + b, c + 1);
            }
            wrong += bad;
          }
        }
      }

      double mpi_mine_us = 0;
#ifdef MOECOMM_HAVE_MPI
      if (baseline) {
        auto mpi = [&] {
          MPI_Alltoall(ex.send.data(), static_cast<int>(per_peer), MPI_BYTE, ex.recv.data(),
                       static_cast<int>(per_peer), MPI_BYTE, MPI_COMM_WORLD);
        };
        for (int i = 0; i < o.warmup; ++i) mpi();
        MPI_Barrier(MPI_COMM_WORLD);
        auto mpi_start = Clock::now();
        for (int i = 0; i < o.iters; ++i) mpi();
        mpi_mine_us =
            std::chrono::duration<double, std::micro>(Clock::now() - mpi_start).count() / o.iters;
      }
#endif
      const std::vector<double> all = context.gather(group, {mine_us, mpi_mine_us, double(wrong)});
      std::vector<double> times, mpi_times;
      int64_t wrong_all = 0;
      for (int r = 0; r < n; ++r) {
        times.push_back(all[3 * r]);
        mpi_times.push_back(all[3 * r + 1]);
        wrong_all += static_cast<int64_t>(all[3 * r + 2]);
      }
      const double us = combine(times, o.average);
      const double algbw = us > 0 ? static_cast<double>(size) / (us * 1e3) : 0;
      const double busbw = algbw * (n - 1) / n;
      const double mpi_us = combine(mpi_times, o.average);
      wrong_total += wrong_all;
      busbw_sum += busbw;
      ++rows_counted;
      if (root) {
        std::printf("%14llu %12llu %9s %10.1f %8.2f %8.2f %7s",
                    static_cast<unsigned long long>(size),
                    static_cast<unsigned long long>(per_peer / elem), o.dtype.c_str(), us, algbw,
                    busbw, o.check > 0 ? std::to_string(wrong_all).c_str() : "N/A");
        if (baseline) std::printf(" %10.1f %7.2f", mpi_us, us > 0 ? mpi_us / us : 0.0);
        std::printf("\n");
        std::fflush(stdout);
        nlohmann::json row = {{"size", size},
                              {"count", per_peer / elem},
                              {"type", o.dtype},
                              {"time_us", us},
                              {"algbw", algbw},
                              {"busbw", busbw},
                              {"wrong", o.check > 0 ? nlohmann::json(wrong_all) : nlohmann::json()},
                              {"cycle", cycle},
                              {"rank_time_us", times}};
        if (baseline) {
          row["baseline_time_us"] = mpi_us;
          row["speedup_vs_baseline"] = us > 0 ? mpi_us / us : 0.0;
        }
        rows.push_back(row);
      }
    }
  }
  const double avg_busbw = rows_counted > 0 ? busbw_sum / rows_counted : 0;
  const double gate = minimumBandwidth();
  const bool data_ok = wrong_total == 0;
  const bool fast_enough = gate <= 0 || avg_busbw >= gate;
  if (root) {
    std::printf("# Out of bounds values : %lld %s\n", static_cast<long long>(wrong_total),
                data_ok ? "OK" : "FAILED");
    std::printf("# Avg bus bandwidth    : %g\n", avg_busbw);
    if (!fast_enough) {
      std::printf("# FAILED: average bus bandwidth %g GB/s is below MOECOMM_PERF_MIN_BW=%g\n",
                  avg_busbw, gate);
    }
    std::printf("#\n");
    if (!o.json.empty()) {
      nlohmann::json doc = {{"tool", "moecomm-perf"},
                            {"command", "alltoall"},
                            {"version", MOECOMM_VERSION_STRING},
                            {"config",
                             {{"min_bytes", o.min_bytes},
                              {"max_bytes", o.max_bytes},
                              {"step_factor", o.factor},
                              {"step_bytes", o.step_bytes},
                              {"iters", o.iters},
                              {"warmup", o.warmup},
                              {"check", o.check},
                              {"datatype", o.dtype},
                              {"average", o.average},
                              {"repeats", o.repeats},
                              {"mode", o.mode},
                              {"baseline", o.baseline},
                              {"transport", transport.name()},
                              {"launch", context.launch()},
                              {"ranks", n}}},
                            {"environment", environmentJson()},
                            {"ranks", nlohmann::json::array()},
                            {"rows", rows},
                            {"summary",
                             {{"avg_busbw", avg_busbw},
                              {"wrong", wrong_total},
                              {"ok", data_ok && fast_enough},
                              {"min_bw_gate", gate}}}};
      for (int r = 0; r < n; ++r)
        doc["ranks"].push_back({{"rank", r}, {"pid", static_cast<int>(pids[r])}});
      if (!writeJson(o.json, doc)) return 2;
    }
  }
  if (!data_ok) return 1;
  return fast_enough ? 0 : 3;
}

}  // namespace moecomm::perf
