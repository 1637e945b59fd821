// The CPU kernels under dispatch and combine, each reporting bytes/s (Google Benchmark's
// "bytes_per_second"): layout, dispatch on one rank (pack + unpack, nothing crosses a wire),
// combine's reduction rows, bf16 conversion and fp8 quantization.
#include <benchmark/benchmark.h>
#include <moecomm/moecomm.hpp>

#include <random>
#include <vector>

#include "kernels/cpu/rows.hpp"

namespace {

using namespace moecomm;

constexpr int64_t kTokens = 4096, kHidden = 2048, kExperts = 64, kTopk = 8;

std::vector<int32_t> randomRouting(int64_t tokens, int experts, int k) {
  std::mt19937 rng(5);
  std::vector<int32_t> idx(size_t(tokens) * k);
  std::vector<int32_t> perm(experts);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), rng);
    std::copy(perm.begin(), perm.begin() + k, idx.begin() + t * k);
  }
  return idx;
}

void BM_Layout(benchmark::State& state) {
  LocalWorld world(1);
  Group group = Group::create(world, 0, {int(kExperts), int(kHidden), DType::kBF16, int(kTopk)});
  auto idx = randomRouting(kTokens, kExperts, kTopk);
  for (auto _ : state) {
    DispatchLayout layout =
        computeLayout(group, TensorView::matrix(idx.data(), DType::kI32, kTokens, kTopk));
    benchmark::DoNotOptimize(layout.tokens_per_expert.data());
  }
  state.SetBytesProcessed(state.iterations() * int64_t(idx.size() * sizeof(int32_t)));
}

// One rank: validation, plan, pack and unpack into the expert-major layout.
void BM_DispatchPackUnpack(benchmark::State& state) {
  LocalWorld world(1);
  Group group = Group::create(world, 0, {int(kExperts), int(kHidden), DType::kBF16, int(kTopk)});
  Dispatcher dispatcher(group);
  auto idx = randomRouting(kTokens, kExperts, kTopk);
  std::vector<float> w(idx.size(), 0.125f);
  Tensor x = Tensor::zeros({kTokens, kHidden}, DType::kBF16);
  for (auto _ : state) {
    ExpertBatch b =
        dispatcher.dispatch(x, TensorView::matrix(idx.data(), DType::kI32, kTokens, kTopk),
                            TensorView::matrix(w.data(), DType::kF32, kTokens, kTopk));
    benchmark::DoNotOptimize(b.x.data());
  }
  // Bytes placed: every (token, expert) row once.
  state.SetBytesProcessed(state.iterations() * int64_t(idx.size()) * kHidden * 2);
}

// Combine's expert-side reduction: k weighted bf16 rows into one f32 accumulator per token.
void BM_CombineReduceRows(benchmark::State& state) {
  const int64_t rows = 1024;
  std::vector<uint16_t> y(size_t(rows) * kHidden, 0x3f80);
  std::vector<float> acc(kHidden);
  for (auto _ : state) {
    for (int64_t r = 0; r < rows; ++r) {
      cpu::accumulateRow(acc.data(), y.data() + r * kHidden, true, 0.5f, kHidden);
    }
    benchmark::DoNotOptimize(acc.data());
  }
  state.SetBytesProcessed(state.iterations() * rows * kHidden * 2);
}

void BM_ConvertF32ToBf16(benchmark::State& state) {
  std::vector<float> src(size_t(kTokens) * 256, 1.5f);
  std::vector<uint16_t> dst(src.size());
  for (auto _ : state) {
    convert(TensorView::vector(src.data(), DType::kF32, int64_t(src.size())),
            TensorView::vector(dst.data(), DType::kBF16, int64_t(dst.size())));
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(state.iterations() * int64_t(src.size() * sizeof(float)));
}

void BM_QuantizeFp8(benchmark::State& state) {
  const int64_t rows = 512;
  std::vector<float> x(size_t(rows) * kHidden);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : x) v = normal(rng);
  std::vector<uint8_t> q(x.size());
  std::vector<float> scales(size_t(rows) * kHidden / 128);
  for (auto _ : state) {
    quantizeFp8(TensorView::matrix(x.data(), DType::kF32, rows, kHidden),
                TensorView::matrix(q.data(), DType::kFP8E4M3, rows, kHidden),
                TensorView::matrix(scales.data(), DType::kF32, rows, kHidden / 128));
    benchmark::DoNotOptimize(q.data());
  }
  state.SetBytesProcessed(state.iterations() * int64_t(x.size() * sizeof(float)));
}

BENCHMARK(BM_Layout)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DispatchPackUnpack)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CombineReduceRows)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ConvertF32ToBf16)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_QuantizeFp8)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
