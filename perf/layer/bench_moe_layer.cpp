// Whole-layer throughput, forward and backward, on 1, 2 and 4 in-process ranks, with the time
// split by phase (the slowest rank's split). Usage: bench_moe_layer [tokens hidden ffn experts
// topk]
#include <moecomm/moecomm.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

namespace {

struct Sizes {
  int tokens = 2048, hidden = 1024, ffn = 2048, experts = 16, topk = 2;
};

struct Result {
  double fwd_ms = 0, bwd_ms = 0;
  moecomm::MoePhaseTimes fwd, bwd;
};

// Runs `iters` steps after one warm-up; returns each rank's last step.
std::vector<Result> run(const Sizes& z, int ranks, int iters) {
  moecomm::LocalWorld world(ranks);
  std::vector<Result> results(ranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      using namespace moecomm;
      Group group = Group::create(world, r, {z.experts, z.hidden, DType::kBF16, z.topk});
      MoeLayerConfig lc;
      lc.ffn = z.ffn;
      lc.router.topk = z.topk;
      MoeLayer layer(group, lc);
      layer.initWeights(1);
      const int64_t T = z.tokens / ranks;  // the same global batch at every rank count
      std::vector<float> x(size_t(T) * z.hidden), g(x.size());
      std::mt19937 rng(r);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (float& v : x) v = normal(rng);
      for (float& v : g) v = normal(rng);
      for (int i = 0; i <= iters; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        MoeOutput out = layer.forward(TensorView::matrix(x.data(), DType::kF32, T, z.hidden));
        auto t1 = std::chrono::steady_clock::now();
        layer.backward(TensorView::matrix(g.data(), DType::kF32, T, z.hidden));
        auto t2 = std::chrono::steady_clock::now();
        if (i == 0) continue;  // warm-up
        results[r].fwd_ms += std::chrono::duration<double, std::milli>(t1 - t0).count() / iters;
        results[r].bwd_ms += std::chrono::duration<double, std::milli>(t2 - t1).count() / iters;
        results[r].fwd = out.times;
        results[r].bwd = layer.lastBackwardTimes();
      }
    });
  }
  for (auto& t : threads) t.join();
  return results;
}

}  // namespace

int main(int argc, char** argv) {
  Sizes z;
  if (argc == 6) {
    z = {std::atoi(argv[1]), std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]),
         std::atoi(argv[5])};
  }
  std::printf(
      "# MoE layer: %d tokens in all, hidden %d, ffn %d, %d SwiGLU experts, top-%d, bf16 "
      "wire, ranks as threads\n",
      z.tokens, z.hidden, z.ffn, z.experts, z.topk);
  std::printf("%5s %4s %10s %12s %8s %9s %8s %8s %8s\n", "ranks", "pass", "ms/step", "tokens/s",
              "route", "dispatch", "experts", "combine", "shared");
  for (int ranks : {1, 2, 4}) {
    const auto results = run(z, ranks, 3);
    const auto slowest = *std::max_element(results.begin(), results.end(), [](auto& a, auto& b) {
      return a.fwd_ms + a.bwd_ms < b.fwd_ms + b.bwd_ms;
    });
    for (bool fwd : {true, false}) {
      const double ms = fwd ? slowest.fwd_ms : slowest.bwd_ms;
      const moecomm::MoePhaseTimes& p = fwd ? slowest.fwd : slowest.bwd;
      std::printf("%5d %4s %10.1f %12.0f %8.1f %9.1f %8.1f %8.1f %8.1f\n", ranks,
                  fwd ? "fwd" : "bwd", ms, z.tokens / (ms / 1e3), p.route_ms, p.dispatch_ms,
                  p.experts_ms, p.combine_ms, p.shared_ms);
    }
  }
  return 0;
}
