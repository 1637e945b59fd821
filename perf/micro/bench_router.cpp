// Router throughput against the roofline of reading the logits once from memory. Every iteration
// starts with the logits flushed from the caches (outside the timed region), so the router and
// the read baseline both fetch them from DRAM, as a router does after the gate GEMM's output has
// left the cache. Run: build/perf/bench_router --benchmark_min_time=1
#include <benchmark/benchmark.h>
#include <moecomm/moecomm.hpp>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kTokens = 4096;
constexpr int kExperts = 256;

std::vector<float> makeLogits() {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(kTokens * kExperts);
  for (float& v : logits) v = normal(rng);
  return logits;
}

void setCounters(benchmark::State& state) {
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(kTokens * state.iterations()),
                                                  benchmark::Counter::kIsRate);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * kTokens * kExperts * 4);
}

// Evicts the logits from every cache level (x86: clflush); elsewhere this is a no-op and the
// numbers are for cached logits. Not timed: the timed benchmarks below use manual timing.
void flush(const std::vector<float>& logits) {
#if defined(__x86_64__)
  const auto* bytes = reinterpret_cast<const char*>(logits.data());
  for (size_t off = 0; off < logits.size() * sizeof(float); off += 64) _mm_clflush(bytes + off);
  _mm_mfence();
#endif
}

// The baseline: every logit read once, as integers so that the loop vectorizes (a float sum
// would be bound by the add latency, not by memory).
double secondsToReadOnce(const std::vector<float>& logits) {
  flush(logits);
  const auto start = std::chrono::steady_clock::now();
  uint32_t sum = 0;
  for (float v : logits) sum += std::bit_cast<uint32_t>(v);
  benchmark::DoNotOptimize(sum);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void BM_ReadLogitsFromMemory(benchmark::State& state) {
  auto logits = makeLogits();
  for (auto _ : state) state.SetIterationTime(secondsToReadOnce(logits));
  setCounters(state);
}

// Each iteration times one read of the logits and then one routing call, both from DRAM. x_read
// is the ratio of their totals, and x_read_median the median of the iterations' own ratios: this
// VM's speed drifts by a third over seconds, and the drift cancels in ratios taken side by side;
// the median also sheds the iterations that another tenant's burst slowed on one side only.
template <typename Route>
void timeAgainstRead(benchmark::State& state, const std::vector<float>& logits, Route route) {
  double read = 0.0, routed = 0.0;
  std::vector<double> ratios;
  for (auto _ : state) {
    const double read_once = secondsToReadOnce(logits);
    read += read_once;
    flush(logits);
    const auto start = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(route());
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    routed += seconds;
    if (read_once > 0.0) ratios.push_back(seconds / read_once);
    state.SetIterationTime(seconds);
  }
  setCounters(state);
  state.counters["x_read"] = read > 0.0 ? routed / read : 0.0;
  if (!ratios.empty()) {
    auto middle = ratios.begin() + static_cast<std::ptrdiff_t>(ratios.size() / 2);
    std::nth_element(ratios.begin(), middle, ratios.end());
    state.counters["x_read_median"] = *middle;
  }
}

void BM_RouteSoftmaxTop8(benchmark::State& state) {
  auto logits = makeLogits();
  moecomm::RouterOptions options;
  options.topk = 8;
  options.renormalize = true;
  moecomm::Router router(options);
  auto view = moecomm::TensorView::matrix(logits.data(), moecomm::DType::kF32, kTokens, kExperts);
  timeAgainstRead(state, logits, [&] { return router.route(view); });
}

void BM_RouteGroupedSigmoidTop8(benchmark::State& state) {
  auto logits = makeLogits();
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> small(-0.05f, 0.05f);
  std::vector<float> bias(kExperts);  // a trained bias is small and uneven
  for (float& b : bias) b = small(rng);
  auto bias_view = moecomm::TensorView::vector(bias.data(), moecomm::DType::kF32, kExperts);
  moecomm::RouterOptions options;  // DeepSeek-V3: 8 groups, 4 kept, top-8, scale 2.5
  options.topk = 8;
  options.score = moecomm::ScoreFunction::kSigmoid;
  options.renormalize = true;
  options.scaling_factor = 2.5f;
  options.num_groups = 8;
  options.topk_groups = 4;
  moecomm::Router router(options);
  auto view = moecomm::TensorView::matrix(logits.data(), moecomm::DType::kF32, kTokens, kExperts);
  timeAgainstRead(state, logits, [&] { return router.route(view, &bias_view); });
}

BENCHMARK(BM_ReadLogitsFromMemory)->Unit(benchmark::kMicrosecond)->UseManualTime();
BENCHMARK(BM_RouteSoftmaxTop8)->Unit(benchmark::kMicrosecond)->UseManualTime();
BENCHMARK(BM_RouteGroupedSigmoidTop8)->Unit(benchmark::kMicrosecond)->UseManualTime();

}  // namespace

BENCHMARK_MAIN();
