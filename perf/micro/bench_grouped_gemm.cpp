// Grouped GEMM over the expert-major layout against one GEMM of the same FLOPs and the BLAS peak
// (a large square GEMM), all in one run. GFLOP/s in the "FLOPS" counter (x 1e-9 = GFLOP/s).
#include <benchmark/benchmark.h>
#include <moecomm/moecomm.hpp>

#include <vector>

namespace {

using namespace moecomm;

Tensor filled(std::initializer_list<int64_t> shape, float value) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  std::fill_n(t.as<float>(), t.numel(), value);
  return t;
}

// experts x rows of [rows, K] x [K, N].
void BM_GroupedGemm(benchmark::State& state) {
  const int64_t experts = state.range(0), rows = state.range(1), K = state.range(2),
                N = state.range(3);
  Tensor a = filled({experts * rows, K}, 0.5f), w = filled({experts, K, N}, 0.25f);
  Tensor c = Tensor::empty({experts * rows, N}, DType::kF32);
  std::vector<int64_t> counts(experts, rows), offsets;
  for (int64_t e = 0; e <= experts; ++e) offsets.push_back(e * rows);
  for (auto _ : state) {
    groupedGemm(GemmForm::kNN, a, w, c, counts, offsets);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["FLOPS"] = benchmark::Counter(2.0 * experts * rows * K * N,
                                               benchmark::Counter::kIsIterationInvariantRate);
}

// The same FLOPs as one GEMM: one expert of experts * rows rows.
void BM_SingleGemm(benchmark::State& state) {
  const int64_t rows = state.range(0), K = state.range(1), N = state.range(2);
  Tensor a = filled({rows, K}, 0.5f), w = filled({1, K, N}, 0.25f);
  Tensor c = Tensor::empty({rows, N}, DType::kF32);
  for (auto _ : state) {
    groupedGemm(GemmForm::kNN, a, w, c, {rows}, {0, rows});
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["FLOPS"] =
      benchmark::Counter(2.0 * rows * K * N, benchmark::Counter::kIsIterationInvariantRate);
}

// Backward forms, for the same shapes as the forward grouped GEMM.
void BM_GroupedGemmWeightGrad(benchmark::State& state) {
  const int64_t experts = state.range(0), rows = state.range(1), K = state.range(2),
                N = state.range(3);
  Tensor a = filled({experts * rows, K}, 0.5f), g = filled({experts * rows, N}, 0.25f);
  Tensor dw = Tensor::zeros({experts, K, N}, DType::kF32);
  std::vector<int64_t> counts(experts, rows), offsets;
  for (int64_t e = 0; e <= experts; ++e) offsets.push_back(e * rows);
  for (auto _ : state) {
    groupedGemm(GemmForm::kTN, a, g, dw, counts, offsets, 0.0f);
    benchmark::DoNotOptimize(dw.data());
  }
  state.counters["FLOPS"] = benchmark::Counter(2.0 * experts * rows * K * N,
                                               benchmark::Counter::kIsIterationInvariantRate);
}

// An expert MLP forward in bf16 compute at decode sizes (few rows per expert), rounding the
// weights on every forward (kept = 0) or once beforehand (kept = 1, cacheWeightOperands).
void BM_ExpertMlpForwardBf16(benchmark::State& state) {
  const int64_t experts = state.range(0), rows = state.range(1);
  const bool kept = state.range(4) != 0;
  ExpertMlpConfig config{static_cast<int>(state.range(2)), static_cast<int>(state.range(3)),
                         static_cast<int>(experts), Activation::kSwiGLU};
  config.compute_dtype = DType::kBF16;
  ExpertMlp mlp(config);
  std::fill_n(mlp.w_in().as<float>(), mlp.w_in().numel(), 0.01f);
  std::fill_n(mlp.w_out().as<float>(), mlp.w_out().numel(), 0.01f);
  if (kept) mlp.cacheWeightOperands();
  Tensor x = filled({experts * rows, config.hidden}, 0.5f);
  std::vector<int64_t> counts(experts, rows), offsets;
  for (int64_t e = 0; e <= experts; ++e) offsets.push_back(e * rows);
  for (auto _ : state) {
    Tensor y = mlp.forward(x.view(), counts, offsets);
    benchmark::DoNotOptimize(y.data());
  }
}

BENCHMARK(BM_GroupedGemm)->Args({8, 512, 1024, 2048})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_SingleGemm)->Args({4096, 1024, 2048})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_SingleGemm)
    ->Args({2048, 2048, 2048})
    ->Name("BM_BlasPeak")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_GroupedGemmWeightGrad)
    ->Args({8, 512, 1024, 2048})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_GroupedGemm)
    ->Args({64, 16, 1024, 2048})
    ->Name("BM_GroupedGemmSmallExperts")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK(BM_ExpertMlpForwardBf16)
    ->ArgNames({"experts", "rows", "hidden", "ffn", "kept"})
    ->Args({8, 4, 1024, 1024, 0})
    ->Args({8, 4, 1024, 1024, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
