// One MoE step on 4 in-process ranks: route, dispatch, a per-expert transform, combine, and a check
// of every output against a dense single-rank reference. The README's main job runs this.
#include <moecomm/moecomm.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

namespace {

constexpr int kRanks = 4;
constexpr int kTokens = 512;  // per rank
constexpr int kHidden = 1024;
constexpr int kExperts = 16;
constexpr int kTopk = 4;

// The "expert": y = x * (1 + e / 8) + e / 100, different for every global expert e.
float expertScale(int e) {
  return 1.0f + static_cast<float>(e) / 8.0f;
}
float expertBias(int e) {
  return static_cast<float>(e) / 100.0f;
}

struct RankReport {
  double max_error = 0.0;
  int64_t received_rows = 0;
  double seconds = 0.0;
  std::string error;
};

void runRank(moecomm::LocalWorld& world, int rank, RankReport& report) {
  using namespace moecomm;
  GroupConfig config;
  config.num_experts = kExperts;
  config.hidden = kHidden;
  config.dtype = DType::kF32;
  config.topk = kTopk;
  Group group = Group::create(world, rank, config);

  std::mt19937 rng(1234 + rank);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(kTokens) * kHidden), logits(kTokens * kExperts);
  for (float& v : x) v = normal(rng);
  for (float& v : logits) v = 2.0f * normal(rng);

  auto start = std::chrono::steady_clock::now();
  Router router(RouterOptions{.topk = kTopk, .renormalize = true});
  Routing routing = router.route(TensorView::matrix(logits.data(), DType::kF32, kTokens, kExperts));
  Dispatcher dispatcher(group, DispatchOptions{/*expert_alignment=*/8});
  ExpertBatch batch =
      dispatcher.dispatch(TensorView::matrix(x.data(), DType::kF32, kTokens, kHidden),
                          routing.topk_idx, routing.topk_weights);
  // The experts: each local expert transforms its contiguous block of rows.
  Tensor y = Tensor::zeros({batch.x.dim(0), kHidden}, DType::kF32);
  for (int e = 0; e < group.localExperts(); ++e) {
    const int global = group.firstLocalExpert() + e;
    for (int64_t r = batch.expert_offsets[e]; r < batch.expert_offsets[e] + batch.expert_counts[e];
         ++r) {
      for (int h = 0; h < kHidden; ++h) {
        y.as<float>()[r * kHidden + h] =
            batch.x.as<float>()[r * kHidden + h] * expertScale(global) + expertBias(global);
      }
    }
  }
  Tensor out = dispatcher.combine(y, batch.handle);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report.received_rows = batch.expert_offsets.back();

  // Dense reference: every token through its k experts, weighted and summed, in double.
  for (int t = 0; t < kTokens; ++t) {
    for (int h = 0; h < kHidden; ++h) {
      double expected = 0.0;
      for (int j = 0; j < kTopk; ++j) {
        int e = routing.topk_idx.as<int32_t>()[t * kTopk + j];
        expected += routing.topk_weights.as<float>()[t * kTopk + j] *
                    (static_cast<double>(x[t * kHidden + h]) * expertScale(e) + expertBias(e));
      }
      report.max_error =
          std::max(report.max_error, std::fabs(expected - out.as<float>()[t * kHidden + h]));
    }
  }
}

}  // namespace

int main() {
  moecomm::LocalWorld world(kRanks);
  std::vector<RankReport> reports(kRanks);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      try {
        runRank(world, r, reports[r]);
      } catch (const std::exception& e) {
        reports[r].error = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();

  std::printf(
      "moecomm %s: one MoE step, %d in-process ranks, %d tokens/rank, hidden %d, %d experts, "
      "top-%d, f32\n",
      MOECOMM_VERSION_STRING, kRanks, kTokens, kHidden, kExperts, kTopk);
  std::printf("%-6s %14s %12s %14s\n", "rank", "expert rows", "time (ms)", "max |error|");
  bool ok = true;
  for (int r = 0; r < kRanks; ++r) {
    if (!reports[r].error.empty()) {
      std::printf("%-6d FAILED: %s\n", r, reports[r].error.c_str());
      ok = false;
      continue;
    }
    bool rank_ok = reports[r].max_error < 1e-4;
    ok = ok && rank_ok;
    std::printf("%-6d %14lld %12.2f %14.3g %s\n", r,
                static_cast<long long>(reports[r].received_rows), reports[r].seconds * 1e3,
                reports[r].max_error, rank_ok ? "OK" : "MISMATCH");
  }
  std::printf("result: %s (route -> dispatch -> experts -> combine matches the dense reference)\n",
              ok ? "PASSED" : "FAILED");
  return ok ? 0 : 1;
}
