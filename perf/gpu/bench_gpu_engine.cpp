// Dispatch + combine through the public API with CUDA tensors, ranks as threads sharing one GPU:
// the GPU-native path (i32 indices) against the path staged through pinned host memory (i64
// indices), in the same run, and the GPU-native path again with the call tensors from the
// stream-ordered pool instead of cudaMalloc/cudaFree, with FP8 rows, and with token-major
// batches (one row per token and rank, so combine sends back the rows as they are); a decode
// shape padded to capacity, with and without the count wait (sync-free); and an
// expert MLP forward in bf16 with its weight operands rounded each time or kept. Prints
// "RESULT" lines for
// scripts/gpu-check.sh. MOECOMM_BENCH_SMOKE=1 runs one tiny shape once, to check that every
// column runs (the emulated GPU tests do, where no GPU is).
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "moecomm/moecomm.hpp"

namespace {

using namespace moecomm;

struct Shape {
  int ranks;
  int64_t tokens;
  int64_t hidden;
  int topk;
  int experts;
};

// Mean milliseconds of one dispatch + combine per rank (all ranks at once). fp8: the group's rows
// are e4m3 with their scales (half of bf16's bytes on the way out); combine takes bf16 rows.
double run(const Shape& s, DType idx_dtype, int iters, std::shared_ptr<DeviceAllocator> allocator,
           bool fp8 = false, const DispatchOptions& options = {}) {
  setDeviceAllocator(std::move(allocator));
  LocalWorld world(s.ranks);
  std::vector<double> ms(static_cast<size_t>(s.ranks));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < s.ranks; ++rank) {
    threads.emplace_back([&, rank] {
      cudaSetDevice(0);
      cudaStream_t stream = nullptr;
      cudaStreamCreate(&stream);
      {  // every tensor dies before its stream (the pool gives memory back on it)
        GroupConfig config;
        config.num_experts = s.experts;
        config.hidden = static_cast<int>(s.hidden);
        config.dtype = fp8 ? DType::kFP8E4M3 : DType::kBF16;
        config.topk = s.topk;
        config.transport = "local";
        Group group = Group::create(world, rank, config);
        Dispatcher d(group, options);
        std::mt19937 rng(static_cast<unsigned>(rank));
        Tensor idx = Tensor::empty({s.tokens, s.topk}, idx_dtype);
        std::vector<int> perm(s.experts);
        for (int64_t t = 0; t < s.tokens; ++t) {
          for (int e = 0; e < s.experts; ++e) perm[e] = e;
          for (int j = 0; j < s.topk; ++j) {
            std::uniform_int_distribution<int> pick(j, s.experts - 1);
            std::swap(perm[j], perm[pick(rng)]);
            if (idx_dtype == DType::kI32) {
              idx.as<int32_t>()[t * s.topk + j] = perm[j];
            } else {
              idx.as<int64_t>()[t * s.topk + j] = perm[j];
            }
          }
        }
        Tensor w = Tensor::empty({s.tokens, s.topk}, DType::kF32);
        for (int64_t i = 0; i < w.numel(); ++i) w.as<float>()[i] = 0.125f;
        const ExecContext ctx{stream};
        const Tensor x = Tensor::zeros({s.tokens, s.hidden}, config.dtype, Device::cuda(0));
        const Tensor scales =
            Tensor::zeros({s.tokens, fp8ScaleBlocks(s.hidden)}, DType::kF32, Device::cuda(0));
        Tensor
            y;  // FP8: the bf16 rows combine takes, made once (the routing is the same each time)
        const Tensor didx = copyTo(idx.view(), Device::cuda(0), ctx);
        const Tensor dw = copyTo(w.view(), Device::cuda(0), ctx);
        Tensor out = Tensor::empty({s.tokens, s.hidden}, DType::kBF16, Device::cuda(0));
        auto once = [&] {
          const ExpertBatch b =
              fp8 ? d.dispatch(x.view(), scales.view(), didx.view(), dw.view(), ctx)
                  : d.dispatch(x.view(), didx.view(), dw.view(), ctx);
          if (fp8 && (!y.defined() || y.dim(0) != b.x.dim(0))) {
            y = Tensor::zeros({b.x.dim(0), s.hidden}, DType::kBF16, Device::cuda(0));
          }
          d.combine(fp8 ? y.view() : b.x.view(), b.handle, out.view(), ctx);
        };
        once();
        cudaStreamSynchronize(stream);
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; ++i) once();
        cudaStreamSynchronize(stream);
        ms[rank] =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                .count() /
            iters;
      }
      cudaStreamDestroy(stream);
    });
  }
  for (auto& t : threads) t.join();
  setDeviceAllocator(nullptr);
  double worst = 0;
  for (double m : ms) worst = std::max(worst, m);
  return worst;
}

// An expert MLP forward in bf16 compute at decode sizes (a few rows per expert), where rounding
// the f32 weights to bf16 on every forward costs more than the GEMMs: ms per forward, with the
// weights rounded each time or kept (cacheWeightOperands). The weights are a constant pattern:
// the time does not depend on their values.
double expertMlpForwardMs(int experts, int64_t rows, int hidden, int ffn, bool kept, int iters) {
  ExpertMlpConfig config{hidden, ffn, experts, Activation::kSwiGLU};
  config.compute_dtype = DType::kBF16;
  config.device = Device::cuda(0);
  cudaStream_t stream = nullptr;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  const ExecContext ctx{stream};
  double ms = 0;
  {
    ExpertMlp mlp(config);
    cudaMemset(mlp.w_in().data(), 0x3c, mlp.w_in().bytes());  // 0.0115 in every f32
    cudaMemset(mlp.w_out().data(), 0x3c, mlp.w_out().bytes());
    cudaDeviceSynchronize();
    if (kept) mlp.cacheWeightOperands(ctx);
    Tensor x = Tensor::zeros({experts * rows, hidden}, DType::kBF16, Device::cuda(0));
    std::vector<int64_t> counts(static_cast<size_t>(experts), rows), offsets;
    for (int e = 0; e <= experts; ++e) offsets.push_back(e * rows);
    mlp.forward(x.view(), counts, offsets, ctx);  // a warm-up
    cudaStreamSynchronize(stream);
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) mlp.forward(x.view(), counts, offsets, ctx);
    cudaStreamSynchronize(stream);
    ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
             .count() /
         iters;
  }
  cudaStreamDestroy(stream);
  return ms;
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIP: no usable GPU\n");
    return 77;
  }
  const bool smoke = std::getenv("MOECOMM_BENCH_SMOKE") != nullptr;
  const std::vector<Shape> shapes =
      smoke ? std::vector<Shape>{{2, 96, 256, 4, 8}}
            : std::vector<Shape>{{8, 8192, 7168, 8, 256}, {2, 4096, 2048, 8, 64}};
  const int iters = smoke ? 1 : 10;
  try {
    for (const Shape& s : shapes) {
      const double native = run(s, DType::kI32, iters, synchronousDeviceAllocator());
      const double pooled = run(s, DType::kI32, iters, streamOrderedDeviceAllocator());
      const double fp8 = run(s, DType::kI32, iters, synchronousDeviceAllocator(), true);
      DispatchOptions token_major_options;
      token_major_options.layout = BatchLayout::kTokenMajor;
      const double token_major =
          run(s, DType::kI32, iters, synchronousDeviceAllocator(), false, token_major_options);
      const double staged = run(s, DType::kI64, smoke ? 1 : 2, synchronousDeviceAllocator());
      std::printf(
          "RESULT engine %d ranks T=%lld H=%lld: native %.2f ms (cudaMalloc), %.2f ms "
          "(stream-ordered pool), %.2f ms (FP8 dispatch), %.2f ms (token-major), staged through "
          "host %.2f ms per dispatch+combine (%.1fx)\n",
          s.ranks, static_cast<long long>(s.tokens), static_cast<long long>(s.hidden), native,
          pooled, fp8, token_major, staged, staged / native);
      std::fflush(stdout);
    }
    // Decode: few tokens per rank, experts padded to twice the mean load (static shapes), with
    // the one wait for the counts (exact-size layout of the padded batch) or without (sync-free).
    // Both on the stream-ordered pool, so no cudaFree waits either.
    const Shape decode = smoke ? Shape{2, 16, 256, 4, 8} : Shape{8, 128, 7168, 8, 256};
    DispatchOptions padded;
    padded.expert_capacity = 2 * decode.tokens * decode.ranks * decode.topk / decode.experts;
    padded.pad_to_capacity = true;
    DispatchOptions sync_free = padded;
    sync_free.sync_free = true;
    const int decode_iters = smoke ? 1 : 50;
    const double waits =
        run(decode, DType::kI32, decode_iters, streamOrderedDeviceAllocator(), false, padded);
    const double no_wait =
        run(decode, DType::kI32, decode_iters, streamOrderedDeviceAllocator(), false, sync_free);
    std::printf(
        "RESULT decode %d ranks T=%lld H=%lld capacity=%lld: padded dispatch+combine %.3f ms "
        "with the count wait, %.3f ms sync-free (%.2fx)\n",
        decode.ranks, static_cast<long long>(decode.tokens), static_cast<long long>(decode.hidden),
        static_cast<long long>(padded.expert_capacity), waits, no_wait, waits / no_wait);
    std::fflush(stdout);
    // 32 local experts of DeepSeek-V3's shape (H=7168, F=2048), 8 rows each.
    const int experts = smoke ? 2 : 32, hidden = smoke ? 256 : 7168, ffn = smoke ? 128 : 2048;
    const int64_t rows = 8;
    const double fresh = expertMlpForwardMs(experts, rows, hidden, ffn, false, iters);
    const double kept = expertMlpForwardMs(experts, rows, hidden, ffn, true, iters);
    std::printf(
        "RESULT expert MLP bf16 forward E=%d rows=%lld H=%d F=%d: %.3f ms rounding the weights "
        "each forward, %.3f ms with them kept (%.2fx)\n",
        experts, static_cast<long long>(rows), hidden, ffn, fresh, kept, fresh / kept);
    std::fflush(stdout);
  } catch (const std::exception& e) {
    std::printf("ERROR: %s\n", e.what());
    return 1;
  }
  return 0;
}
