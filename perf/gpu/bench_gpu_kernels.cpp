// The CUDA kernels against their rooflines, in one run: pack, unpack and both combine reductions
// against a device-to-device copy of the same bytes; the router against the logits it reads (and
// against PyTorch's softmax + topk through perf/gpu/torch_router_baseline.py, on logits this
// program writes); the grouped GEMM against one cuBLAS GEMM of the same FLOPs.
// Prints one "RESULT" line per measurement for scripts/gpu-check.sh's summary.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/gating.hpp"
#include "kernels/cuda/combine.hpp"
#include "kernels/cuda/fp8.hpp"
#include "kernels/cuda/gate.hpp"
#include "kernels/cuda/grouped_gemm.hpp"
#include "kernels/cuda/layout.hpp"
#include "kernels/cuda/unpack.hpp"
#include "tests/gpu/device_buffer.hpp"

namespace {

using moecomm::gputest::cudaOrThrow;
using moecomm::gputest::DeviceBuffer;
namespace cuda = moecomm::cuda;

// Mean milliseconds of `fn` over `iters` runs after `warmup`, timed with events on `stream`.
double timeMs(cudaStream_t stream, const std::function<void()>& fn, int warmup = 3,
              int iters = 20) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t start;
  cudaEvent_t stop;
  cudaOrThrow(cudaEventCreate(&start), "event");
  cudaOrThrow(cudaEventCreate(&stop), "event");
  cudaOrThrow(cudaEventRecord(start, stream), "record");
  for (int i = 0; i < iters; ++i) fn();
  cudaOrThrow(cudaEventRecord(stop, stream), "record");
  cudaOrThrow(cudaEventSynchronize(stop), "sync");
  float ms = 0;
  cudaOrThrow(cudaEventElapsedTime(&ms, start, stop), "elapsed");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / iters;
}

void check(cudaError_t status, const char* what) {
  cudaOrThrow(status, what);
}

// A device-to-device copy of `bytes`: GB/s counting bytes read and written.
double copyRate(cudaStream_t stream, size_t bytes) {
  DeviceBuffer<uint8_t> a(bytes), b(bytes);
  check(cudaMemset(a.get(), 1, bytes), "memset");
  const double ms = timeMs(stream, [&] {
    check(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, stream), "copy");
  });
  return 2.0 * static_cast<double>(bytes) / (ms * 1e6);
}

void result(const char* name, double ms, double gbs, double baseline, double target,
            const char* unit = "GB/s") {
  const double ratio = baseline > 0 ? gbs / baseline : 0;
  std::printf("RESULT %-28s %9.1f us %9.1f %s  baseline %9.1f  ratio %5.2f  target %4.2f  %s\n",
              name, ms * 1e3, gbs, unit, baseline, ratio, target,
              target <= 0 ? "info" : (ratio >= target ? "MET" : "MISSED"));
}

struct Shape {
  int64_t tokens = 8192;
  int64_t hidden = 7168;
  int topk = 8;
  int experts = 256;
  int ranks = 8;
};

// Uniform routing: k distinct experts per token.
std::vector<int32_t> routing(const Shape& s, std::mt19937& rng) {
  std::vector<int32_t> idx(static_cast<size_t>(s.tokens * s.topk));
  std::vector<int32_t> perm(s.experts);
  for (int64_t t = 0; t < s.tokens; ++t) {
    for (int e = 0; e < s.experts; ++e) perm[e] = e;
    for (int j = 0; j < s.topk; ++j) {
      std::uniform_int_distribution<int> pick(j, s.experts - 1);
      std::swap(perm[j], perm[pick(rng)]);
      idx[t * s.topk + j] = perm[j];
    }
  }
  return idx;
}

void benchDataMovement(cudaStream_t stream, const Shape& s) {
  std::mt19937 rng(7);
  const int64_t row_bytes = s.hidden * 2;  // bf16
  const int per_rank = s.experts / s.ranks;
  // Rank 0's side: its tokens' layout and send buffer.
  const std::vector<int32_t> idx = routing(s, rng);
  DeviceBuffer<int32_t> d_idx(idx);
  DeviceBuffer<int32_t> tpe(s.experts), tpr(s.ranks), offsets(s.ranks + 1), pos(s.tokens * s.ranks);
  DeviceBuffer<uint8_t> in_rank(s.tokens * s.ranks);
  const cuda::LayoutOutputs lo{tpe.get(), tpr.get(),     offsets.get(),
                               pos.get(), in_rank.get(), nullptr};
  const double layout_ms = timeMs(stream, [&] {
    check(cuda::computeLayout(d_idx.get(), s.tokens, s.topk, s.experts, s.ranks, lo, stream),
          "layout");
  });
  result("layout (T=8192 k=8 E=256 R=8)", layout_ms, 0, 0, 0, "-");
  const int64_t sent = offsets.download().back();
  DeviceBuffer<uint8_t> x(static_cast<size_t>(s.tokens * row_bytes));
  check(cudaMemset(x.get(), 0x3c, x.size()), "memset");
  DeviceBuffer<uint8_t> send(static_cast<size_t>(sent * row_bytes));
  const double pack_ms = timeMs(stream, [&] {
    check(cuda::packRows(x.get(), s.tokens, row_bytes, s.ranks, pos.get(), send.get(), stream),
          "pack");
  });
  const double pack_bytes = static_cast<double>((s.tokens + sent) * row_bytes);
  const double pack_copy = copyRate(stream, static_cast<size_t>(pack_bytes / 2));
  result("pack", pack_ms, pack_bytes / (pack_ms * 1e6), pack_copy, 0.8);

  // Rank 0 as a destination: rows from 8 sources, each routed like rank 0's tokens.
  std::vector<int32_t> recv_experts;
  for (int src = 0; src < s.ranks; ++src) {
    const std::vector<int32_t> src_idx = routing(s, rng);
    for (int64_t t = 0; t < s.tokens; ++t) {
      bool any = false;
      std::vector<int32_t> row(s.topk, -1);
      for (int j = 0; j < s.topk; ++j) {
        const int32_t e = src_idx[t * s.topk + j];
        if (e / per_rank == 0) {
          row[j] = e;
          any = true;
        }
      }
      if (any) recv_experts.insert(recv_experts.end(), row.begin(), row.end());
    }
  }
  const int64_t rows_in = static_cast<int64_t>(recv_experts.size()) / s.topk;
  int64_t slots = 0;
  for (int32_t e : recv_experts) slots += e >= 0;
  DeviceBuffer<int32_t> d_recv_exp(recv_experts);
  DeviceBuffer<float> recv_w(std::vector<float>(recv_experts.size(), 0.5f));
  DeviceBuffer<uint8_t> recv(static_cast<size_t>(rows_in * row_bytes));
  check(cudaMemset(recv.get(), 0x3c, recv.size()), "memset");
  cuda::UnpackOptions o;
  o.local_experts = per_rank;
  o.alignment = 128;
  o.max_rows = slots + static_cast<int64_t>(per_rank) * 128;
  DeviceBuffer<int32_t> demand(per_rank), counts(per_rank), eoff(per_rank + 1),
      slot_row(rows_in * s.topk), row_source(o.max_rows), refused(1), overflow(1);
  const cuda::UnpackPlan plan{demand.get(),     counts.get(),  eoff.get(),    slot_row.get(),
                              row_source.get(), refused.get(), overflow.get()};
  const double plan_ms = timeMs(stream, [&] {
    check(cuda::planUnpack(d_recv_exp.get(), rows_in, s.topk, o, plan, stream), "plan");
  });
  result("unpack plan (sort)", plan_ms, 0, 0, 0, "-");
  const int64_t layout_rows = eoff.download().back();
  DeviceBuffer<uint8_t> layout(static_cast<size_t>(o.max_rows * row_bytes));
  DeviceBuffer<float> row_w(o.max_rows);
  const double unpack_ms = timeMs(stream, [&] {
    check(cuda::unpackRows(recv.get(), recv_w.get(), s.topk, row_bytes, plan, per_rank, o.max_rows,
                           layout.get(), row_w.get(), stream),
          "unpack");
  });
  // Each layout row is read once (or zero-filled) and written once.
  const double unpack_bytes = static_cast<double>(2 * layout_rows * row_bytes);
  const double unpack_copy = copyRate(stream, static_cast<size_t>(layout_rows * row_bytes));
  result("unpack", unpack_ms, unpack_bytes / (unpack_ms * 1e6), unpack_copy, 0.8);

  // Combine, expert side: the layout rows (one read per kept slot) into one row per received row.
  check(cudaMemset(layout.get(), 0x3c, layout.size()), "memset");
  DeviceBuffer<uint8_t> partial(static_cast<size_t>(rows_in * row_bytes));
  const double expert_ms = timeMs(stream, [&] {
    check(cuda::combineExpertSide(layout.get(), cuda::RowType::kBF16, s.hidden, rows_in, s.topk,
                                  slot_row.get(), row_w.get(), partial.get(), stream),
          "combine expert side");
  });
  const double expert_bytes = static_cast<double>((slots + rows_in) * row_bytes);
  const double expert_copy = copyRate(stream, static_cast<size_t>(expert_bytes / 2));
  result("combine (expert side)", expert_ms, expert_bytes / (expert_ms * 1e6), expert_copy, 0.8);

  // Combine, home side: what came back (send-buffer order) summed per token.
  const double reduce_ms = timeMs(stream, [&] {
    check(cuda::combineReduce(send.get(), cuda::RowType::kBF16, s.hidden, s.tokens, s.ranks,
                              pos.get(), x.get(), stream),
          "combine reduce");
  });
  const double reduce_bytes = pack_bytes;
  result("combine (home reduce)", reduce_ms, reduce_bytes / (reduce_ms * 1e6), pack_copy, 0.8);

  // FP8 quantization of the tokens (bf16 in, e4m3 + scales out).
  DeviceBuffer<uint8_t> q(static_cast<size_t>(s.tokens * s.hidden));
  DeviceBuffer<float> scales(static_cast<size_t>(s.tokens * ((s.hidden + 127) / 128)));
  const double quant_ms = timeMs(stream, [&] {
    check(cuda::quantizeFp8(x.get(), cuda::RowType::kBF16, s.tokens, s.hidden, q.get(),
                            scales.get(), stream),
          "quantize");
  });
  const double quant_bytes = static_cast<double>(s.tokens * s.hidden * 3 + scales.size() * 4);
  const double quant_copy = copyRate(stream, static_cast<size_t>(quant_bytes / 2));
  result("fp8 quantize", quant_ms, quant_bytes / (quant_ms * 1e6), quant_copy, 0);
}

void benchRouter(cudaStream_t stream, int64_t tokens, const char* logits_path) {
  const int E = 256;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> logits(static_cast<size_t>(tokens * E));
  for (float& l : logits) l = normal(rng);
  if (logits_path != nullptr) {
    std::FILE* f = std::fopen(logits_path, "wb");
    if (f != nullptr) {
      std::fwrite(logits.data(), sizeof(float), logits.size(), f);
      std::fclose(f);
    }
  }
  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<float> bias(std::vector<float>(E, 0.01f));
  DeviceBuffer<int32_t> idx(tokens * 8), bad(1);
  DeviceBuffer<float> w(tokens * 8);
  const double read_gbs = copyRate(stream, logits.size() * 4) / 2;  // a read is half a copy
  struct Config {
    const char* name;
    moecomm::cpu::GateParams p;
    bool bias;
  };
  const Config configs[] = {
      {"router softmax top-8", {E, 8, 0, true, 1.0f, 0, 0, 0}, false},
      {"router deepseek sigmoid", {E, 8, 1, true, 2.5f, 8, 4, 0}, true},
  };
  for (const Config& c : configs) {
    const double ms = timeMs(stream, [&] {
      check(cuda::gate(d_logits.get(), tokens, c.bias ? bias.get() : nullptr, c.p, idx.get(),
                       w.get(), nullptr, nullptr, bad.get(), stream),
            "gate");
    });
    const double gbs = static_cast<double>(logits.size() * 4) / (ms * 1e6);
    std::string name = std::string(c.name) + " T=" + std::to_string(tokens);
    result(name.c_str(), ms, gbs, read_gbs, 0);
  }
}

void benchGroupedGemm(cudaStream_t stream) {
  // One rank of T=8192, k=8, E=256 over 8 ranks: 32 local experts, ~2048 rows each, hidden 7168
  // to an FFN width of 2048.
  const int L = 32;
  const int64_t k = 7168;
  const int64_t n = 2048;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int64_t> rows(1536, 2560);
  std::vector<int64_t> offsets = {0};
  for (int e = 0; e < L; ++e) offsets.push_back(offsets.back() + rows(rng) / 8 * 8);
  const int64_t m = offsets.back();
  DeviceBuffer<uint16_t> x(static_cast<size_t>(m * k)), w(static_cast<size_t>(L * k * n)),
      y(static_cast<size_t>(m * n)), w1(static_cast<size_t>(k * n));
  check(cudaMemset(x.get(), 0x3c, x.size() * 2), "memset");
  check(cudaMemset(w.get(), 0x3c, w.size() * 2), "memset");
  check(cudaMemset(w1.get(), 0x3c, w1.size() * 2), "memset");
  cublasHandle_t handle = nullptr;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate");
  cuda::GemmPath path = cuda::GemmPath::kGrouped;
  const double grouped_ms = timeMs(stream, [&] {
    if (cuda::groupedGemmBf16(handle, x.get(), offsets, k, n, w.get(), y.get(), stream, &path) !=
        CUBLAS_STATUS_SUCCESS) {
      throw std::runtime_error("grouped GEMM failed");
    }
  });
  const std::vector<int64_t> one = {0, m};
  const double single_ms = timeMs(stream, [&] {
    if (cuda::groupedGemmBf16(handle, x.get(), one, k, n, w1.get(), y.get(), stream, nullptr) !=
        CUBLAS_STATUS_SUCCESS) {
      throw std::runtime_error("single GEMM failed");
    }
  });
  cublasDestroy(handle);
  const double flops = 2.0 * static_cast<double>(m) * k * n;
  const std::string name = std::string("grouped GEMM (") +
                           (path == cuda::GemmPath::kGrouped ? "grouped call" : "per expert") + ")";
  result(name.c_str(), grouped_ms, flops / (grouped_ms * 1e9), flops / (single_ms * 1e9), 0.8,
         "TFLOP/s");
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIP: no usable GPU\n");
    return 77;
  }
  const char* logits_path = argc > 1 ? argv[1] : nullptr;
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("GPU: %s, %d SMs, %.0f GiB\n", prop.name, prop.multiProcessorCount,
              static_cast<double>(prop.totalGlobalMem) / (1 << 30));
  cudaStream_t stream = nullptr;
  check(cudaStreamCreate(&stream), "stream");
  int failures = 0;
  const std::pair<const char*, std::function<void()>> parts[] = {
      {"data movement", [&] { benchDataMovement(stream, Shape{}); }},
      {"router",
       [&] {
         benchRouter(stream, 4096, logits_path);
         benchRouter(stream, 65536, nullptr);
       }},
      {"grouped GEMM", [&] { benchGroupedGemm(stream); }},
  };
  for (const auto& [name, fn] : parts) {
    try {
      fn();
    } catch (const std::exception& e) {
      ++failures;
      std::printf("ERROR in %s: %s\n", name, e.what());
    }
  }
  cudaStreamDestroy(stream);
  return failures == 0 ? 0 : 1;
}
