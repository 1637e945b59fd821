// The public API with CUDA tensors: routing, dispatch and combine forward and backward on 1, 2, 4
// and 8 ranks sharing one GPU (threads, each with its own stream), and the grouped GEMM, each
// against the same call on host tensors. Outputs are poisoned first, so unwritten elements fail.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cuda/capacity.hpp"
#include "moecomm/allocator.hpp"
#include "moecomm/dispatch.hpp"
#include "moecomm/error.hpp"
#include "moecomm/experts.hpp"
#include "moecomm/group.hpp"
#include "moecomm/quant.hpp"
#include "moecomm/router.hpp"
#include "src/core/numeric.hpp"
#include "src/routing/capacity.hpp"
#include "tests/gpu/exchange_checks.hpp"
#include "tests/gpu/gpu_test.hpp"
#include "tests/gpu/ledger_on_gpu.hpp"
#include "tests/gpu/tensors.hpp"
#include "transport/factory.hpp"

namespace moecomm::gputest {
namespace {

// ------------------------------------------------------------------------------------ router

GPU_TEST(router_on_gpu_matches_cpu) {
  struct Case {
    const char* name;
    RouterOptions options;
    int experts;
    bool bias;
  };
  std::vector<Case> cases;
  RouterOptions softmax;
  softmax.topk = 8;
  softmax.renormalize = true;
  cases.push_back({"softmax", softmax, 256, false});
  RouterOptions deepseek;
  deepseek.topk = 8;
  deepseek.score = ScoreFunction::kSigmoid;
  deepseek.renormalize = true;
  deepseek.scaling_factor = 2.5f;
  deepseek.num_groups = 8;
  deepseek.topk_groups = 4;
  cases.push_back({"deepseek", deepseek, 256, true});
  RouterOptions mixtral;
  mixtral.topk = 2;
  mixtral.score = ScoreFunction::kTopkThenSoftmax;
  cases.push_back({"mixtral", mixtral, 8, false});
  RouterOptions capacity = softmax;
  capacity.capacity_factor = 1.0;
  capacity.overflow = OverflowPolicy::kReroute;
  cases.push_back({"capacity reroute by position (GPU)", capacity, 64, false});
  RouterOptions reroute_probability = deepseek;
  reroute_probability.capacity_factor = 0.9;
  reroute_probability.drop_policy = DropPolicy::kProbability;
  reroute_probability.overflow = OverflowPolicy::kReroute;
  reroute_probability.reroute_candidates = 6;
  cases.push_back({"capacity reroute by probability (GPU)", reroute_probability, 256, true});
  RouterOptions drop_position = softmax;
  drop_position.capacity_factor = 0.8;
  drop_position.drop_policy = DropPolicy::kPosition;
  cases.push_back({"capacity drop by position (GPU)", drop_position, 64, false});
  RouterOptions drop_probability = deepseek;
  drop_probability.capacity_factor = 0.9;
  drop_probability.drop_policy = DropPolicy::kProbability;
  cases.push_back({"capacity drop by probability (GPU)", drop_probability, 256, true});
  for (const Case& c : cases) {
    const int64_t tokens = 2048;
    const Router router(c.options);
    const Tensor logits = randomHost({tokens, c.experts}, DType::kF32, -3.0f, 3.0f);
    const Tensor bias = randomHost({c.experts}, DType::kF32, -0.05f, 0.05f);
    const Tensor d_logits = onGpu(logits);
    const Tensor d_bias = onGpu(bias);
    const Routing host = router.route(logits.view(), c.bias ? &bias.view() : nullptr);
    const Routing dev = router.route(d_logits.view(), c.bias ? &d_bias.view() : nullptr);
    GPU_CHECK(dev.topk_idx.device().isCuda() && dev.topk_weights.device().isCuda(),
              c.name << ": routing of CUDA logits must stay on the GPU");
    const Tensor idx = onHost(dev.topk_idx.view());
    const Tensor w = onHost(dev.topk_weights.view());
    int64_t differing = 0;
    for (int64_t i = 0; i < tokens * c.options.topk; ++i) {
      if (idx.as<int32_t>()[i] != host.topk_idx.as<int32_t>()[i]) {
        ++differing;  // a near-tie decided by float rounding (test_gpu_kernels bounds these)
        continue;
      }
      const float want = host.topk_weights.as<float>()[i];
      const float got = w.as<float>()[i];
      GPU_CHECK(std::fabs(want - got) <= 2e-5f * std::max(1.0f, std::fabs(want)),
                c.name << " slot " << i << ": weight " << got << " want " << want);
    }
    GPU_CHECK(differing <= tokens * c.options.topk / 1000,
              c.name << ": " << differing << " slots differ from the CPU router");
    if (differing == 0) {
      GPU_CHECK(dev.stats.tokens_per_expert == host.stats.tokens_per_expert,
                c.name << ": load statistics differ");
      GPU_CHECK(
          dev.stats.dropped == host.stats.dropped && dev.stats.rerouted == host.stats.rerouted,
          c.name << ": dropped/rerouted differ");
    }
    // Losses and backward on GPU tensors (the per-token kernels) against the host on the same
    // routing: the same f64 code, so equal up to the last bits of exp and log. The aux loss
    // over the whole batch, per sequence chunk, and with the group's global counts; the
    // backward with and without the weights' gradient.
    Routing dev_on_host = dev;
    dev_on_host.topk_idx = idx;
    dev_on_host.topk_weights = w;
    dev_on_host.selected_idx = onHost(dev.selected_idx.view());
    std::vector<int64_t> global(static_cast<size_t>(c.experts));
    for (int e = 0; e < c.experts; ++e) global[e] = 3 * e + 1;
    const Tensor grad_w = randomHost({tokens, c.options.topk}, DType::kF32);
    const Tensor d_grad_w = onGpu(grad_w);
    struct LossCase {
      RouterLossOptions lo;
      const std::vector<int64_t>* global;
      bool weights;
    };
    for (const LossCase& lc :
         {LossCase{{0.01, 0, 0.001}, nullptr, true}, LossCase{{0.02, 300, 0.0}, nullptr, true},
          LossCase{{0.01, 0, 0.002}, &global, false}, LossCase{{0.0, 0, 0.0}, nullptr, true}}) {
      const std::string tag = std::string(c.name) + " aux " + std::to_string(lc.lo.aux_loss_coeff) +
                              " seq " + std::to_string(lc.lo.aux_seq_len) +
                              (lc.global != nullptr ? " global" : "") +
                              (lc.weights ? "" : " no weights");
      const RouterLosses l_host = router.losses(logits.view(), dev_on_host, lc.lo, lc.global);
      const RouterLosses l_dev = router.losses(d_logits.view(), dev, lc.lo, lc.global);
      GPU_CHECK(std::fabs(l_host.aux_loss - l_dev.aux_loss) <= 1e-12 * std::fabs(l_host.aux_loss) &&
                    std::fabs(l_host.z_loss - l_dev.z_loss) <= 1e-12 * std::fabs(l_host.z_loss),
                tag << ": losses " << l_dev.aux_loss << "/" << l_dev.z_loss << " vs host "
                    << l_host.aux_loss << "/" << l_host.z_loss);
      Tensor g_host = Tensor::empty({tokens, c.experts}, DType::kF32);
      Tensor g_dev = poisoned({tokens, c.experts}, DType::kF32);
      router.backward(logits.view(), dev_on_host, lc.weights ? &grad_w.view() : nullptr, lc.lo,
                      g_host.view(), lc.global);
      router.backward(d_logits.view(), dev, lc.weights ? &d_grad_w.view() : nullptr, lc.lo,
                      g_dev.view(), lc.global);
      GPU_CHECK(closeFloats(g_host.view(), onHost(g_dev.view()).view(), 1e-6f),
                tag << ": router backward differs");
    }
  }
}

// Router::losses on GPU logits raises a non-finite logit naming its row, as the host does.
GPU_TEST(router_losses_on_gpu_refuse_non_finite_logits) {
  RouterOptions o;
  o.topk = 2;
  const Router router(o);
  Tensor logits = randomHost({16, 8}, DType::kF32);
  const Routing r = router.route(onGpu(logits).view());
  logits.as<float>()[9 * 8 + 4] = std::numeric_limits<float>::infinity();
  const Tensor d_logits = onGpu(logits);
  GPU_CHECK(throwsWith(
                [&] {
                  (void)router.losses(d_logits.view(), r, {0.01, 0, 0.001});
                },
                StatusCode::kInvalidArgument, "row 9"),
            "an infinite logit in row 9 must fail the losses naming the row");
}

// The capacity kernel against the CPU's applyCapacity on the same gate output, bit for bit:
// which assignments are dropped, the statistics, and the first overflow kError reports.
GPU_TEST(capacity_kernel_matches_cpu) {
  for (DropPolicy policy : {DropPolicy::kPosition, DropPolicy::kProbability}) {
    for (double factor : {0.5, 1.0, 2.0}) {
      RouterOptions o;
      o.topk = 4;
      o.capacity_factor = factor;
      o.drop_policy = policy;
      const int64_t tokens = 3000;
      const int experts = 32;
      const Tensor logits = randomHost({tokens, experts}, DType::kF32, -2.0f, 2.0f);
      // Skew: expert 3 is everyone's favourite, so it overflows at every factor.
      for (int64_t t = 0; t < tokens; ++t) logits.as<float>()[t * experts + 3] += 3.0f;
      RouterOptions dropless = o;
      dropless.capacity_factor = 0.0;
      const Routing gate = Router(dropless).route(logits.view());
      const int64_t capacity = expertCapacity(o, tokens, experts);
      // CPU.
      std::vector<int32_t> idx(gate.topk_idx.as<int32_t>(),
                               gate.topk_idx.as<int32_t>() + tokens * 4);
      std::vector<float> w(gate.topk_weights.as<float>(),
                           gate.topk_weights.as<float>() + tokens * 4);
      LoadStats cpu_stats;
      if (!applyCapacity(o, tokens, experts, capacity, idx.data(), w.data(), nullptr, nullptr,
                         &cpu_stats)
               .isOk()) {
        throw Failure("the CPU capacity pass failed");
      }
      // GPU, twice: dropping, and only detecting (kError).
      for (bool drop : {true, false}) {
        const Tensor d_idx = onGpu(gate.topk_idx);
        const Tensor d_w = onGpu(gate.topk_weights);
        Tensor demand = poisoned({experts}, DType::kI32);
        Tensor first = onGpu([&] {
          Tensor t = Tensor::empty({1}, DType::kI32);
          t.as<int32_t>()[0] = INT32_MAX;
          return t;
        }());
        CUDA_OK(cuda::applyCapacity(d_idx.as<int32_t>(), d_w.as<float>(), tokens * 4, experts,
                                    capacity, policy == DropPolicy::kProbability, drop,
                                    {demand.as<int32_t>(), first.as<int32_t>()}, nullptr, nullptr));
        const Tensor g_idx = onHost(d_idx.view());
        const Tensor g_w = onHost(d_w.view());
        const Tensor g_demand = onHost(demand.view());
        const std::string tag =
            std::string(policy == DropPolicy::kPosition ? "position" : "probability") + " factor " +
            std::to_string(factor) + (drop ? " drop" : " detect");
        for (int e = 0; e < experts; ++e) {
          GPU_CHECK(g_demand.as<int32_t>()[e] == cpu_stats.demand_per_expert[e],
                    tag << ": demand of expert " << e);
        }
        const bool overflowed = cpu_stats.dropped > 0;
        const int32_t first_slot = onHost(first.view()).as<int32_t>()[0];
        GPU_CHECK(overflowed == (first_slot != INT32_MAX), tag << ": overflow detection");
        if (drop) {
          GPU_CHECK(std::memcmp(g_idx.data(), idx.data(), idx.size() * 4) == 0,
                    tag << ": kept assignments differ from the CPU's");
          GPU_CHECK(std::memcmp(g_w.data(), w.data(), w.size() * 4) == 0,
                    tag << ": weights differ from the CPU's");
        } else {
          GPU_CHECK(sameBytes(g_idx.view(), gate.topk_idx.view()), tag << ": detect changed idx");
          if (overflowed) {
            // The CPU's error names the expert of its first overflowing claim.
            RouterOptions strict = o;
            strict.overflow = OverflowPolicy::kError;
            std::string cpu_message;
            try {
              (void)Router(strict).route(logits.view());
            } catch (const Error& e) {
              cpu_message = e.what();
            }
            const int32_t e = gate.topk_idx.as<int32_t>()[first_slot];
            GPU_CHECK(
                cpu_message.find("expert " + std::to_string(e) + " is over capacity") !=
                    std::string::npos,
                tag << ": GPU's first overflow is expert " << e << ", CPU says: " << cpu_message);
          }
        }
      }
    }
  }
}

GPU_TEST(router_on_gpu_refuses_non_finite_logits) {
  RouterOptions o;
  o.topk = 2;
  const Router router(o);
  Tensor logits = randomHost({16, 8}, DType::kF32);
  logits.as<float>()[5 * 8 + 1] = std::numeric_limits<float>::quiet_NaN();
  const Tensor d_logits = onGpu(logits);
  GPU_CHECK(throwsWith([&] { (void)router.route(d_logits.view()); }, StatusCode::kInvalidArgument,
                       "row 5"),
            "a NaN logit on the GPU must fail naming row 5");
}

// routeOnStream on a GPU: the same routing as route() without the wait, its device_stats in the
// documented layout (read on the GPU's side of a copy), and route()'s errors deferred to
// collectStats: a NaN token routed nowhere, an overflow under kError.
GPU_TEST(route_on_stream_defers_the_wait_and_the_errors) {
  cudaStream_t stream = nullptr;
  CUDA_OK(cudaStreamCreate(&stream));
  const ExecContext ctx{stream};
  const int E = 64;
  const int64_t tokens = 1000;
  for (OverflowPolicy overflow :
       {OverflowPolicy::kDrop, OverflowPolicy::kReroute, OverflowPolicy::kError}) {
    RouterOptions o;
    o.topk = 4;
    o.capacity_factor = overflow == OverflowPolicy::kError ? 0.0 : 0.8;
    o.overflow = overflow;
    const Router router(o);
    const Tensor logits = randomHost({tokens, E}, DType::kF32, -3.0f, 3.0f);
    const Tensor d_logits = onGpu(logits, stream);
    const Routing want = router.route(d_logits.view(), nullptr, ctx);
    Routing got = router.routeOnStream(d_logits.view(), nullptr, ctx);
    GPU_CHECK(got.stats.demand_per_expert.empty(), "routeOnStream must leave stats to collect");
    GPU_CHECK(got.device_stats.device().isCuda() && got.device_stats.numel() == 2 * E + 4,
              "device_stats must be i64[2E + 4] on the GPU");
    const Tensor v = onHost(got.device_stats.view());
    CUDA_OK(cudaStreamSynchronize(stream));
    GPU_CHECK(sameBytes(onHost(want.topk_idx.view()).view(), onHost(got.topk_idx.view()).view()),
              "routeOnStream's routing differs from route()'s");
    for (int e = 0; e < E; ++e) {
      GPU_CHECK(v.as<int64_t>()[e] == want.stats.demand_per_expert[e] &&
                    v.as<int64_t>()[E + e] == want.stats.tokens_per_expert[e],
                "device_stats of expert " << e);
    }
    GPU_CHECK(v.as<int64_t>()[2 * E] == want.stats.dropped &&
                  v.as<int64_t>()[2 * E + 1] == want.stats.rerouted &&
                  v.as<int64_t>()[2 * E + 2] == -1 && v.as<int64_t>()[2 * E + 3] == -1,
              "device_stats totals: dropped "
                  << v.as<int64_t>()[2 * E] << " want " << want.stats.dropped << ", rerouted "
                  << v.as<int64_t>()[2 * E + 1] << " want " << want.stats.rerouted << ", errors "
                  << v.as<int64_t>()[2 * E + 2] << " " << v.as<int64_t>()[2 * E + 3]);
    const LoadStats& s = router.collectStats(got, ctx);
    GPU_CHECK(s.tokens_per_expert == want.stats.tokens_per_expert &&
                  s.dropped == want.stats.dropped && s.rerouted == want.stats.rerouted &&
                  s.imbalance == want.stats.imbalance,
              "collected stats differ from route()'s");
  }
  // A NaN token: routed nowhere without a wait, raised by collectStats.
  RouterOptions o;
  o.topk = 2;
  const Router router(o);
  Tensor logits = randomHost({16, 8}, DType::kF32);
  logits.as<float>()[5 * 8 + 3] = std::numeric_limits<float>::quiet_NaN();
  const Tensor d_logits = onGpu(logits, stream);
  Routing r = router.routeOnStream(d_logits.view(), nullptr, ctx);
  const Tensor idx = onHost(r.topk_idx.view());
  GPU_CHECK(idx.as<int32_t>()[10] == -1 && idx.as<int32_t>()[11] == -1,
            "the NaN token must be routed nowhere");
  GPU_CHECK(throwsWith([&] { router.collectStats(r, ctx); }, StatusCode::kInvalidArgument, "row 5"),
            "collectStats must raise the NaN in row 5");
  // An overflow under kError: left in place, raised by collectStats naming the expert.
  RouterOptions strict;
  strict.topk = 1;
  strict.capacity_factor = 1.0;
  strict.overflow = OverflowPolicy::kError;
  const Router strict_router(strict);
  Tensor hot = Tensor::empty({32, 4}, DType::kF32);
  for (int64_t i = 0; i < hot.numel(); ++i) hot.as<float>()[i] = i % 4 == 2 ? 5.0f : 0.0f;
  const Tensor d_hot = onGpu(hot, stream);
  Routing over = strict_router.routeOnStream(d_hot.view(), nullptr, ctx);
  GPU_CHECK(throwsWith([&] { strict_router.collectStats(over, ctx); }, StatusCode::kInvalidArgument,
                       "expert 2 is over capacity"),
            "collectStats must raise expert 2's overflow");
  CUDA_OK(cudaStreamDestroy(stream));
}

// ------------------------------------------------------------------ dispatch and combine

// An engine case on `ranks` threads sharing one GPU (local, ucx) or one rank per GPU (nccl).
void dispatchCombineRanks(int ranks, const EngineCase& c, const std::string& transport = "local") {
  printEngineCase(transport, ranks, c);
  LocalWorld world(ranks);
  onThreads(
      ranks,
      [&](int rank) {
        onStream([&](cudaStream_t stream) {
          Group group = Group::create(world, rank, engineGroupConfig(transport));
          checkDispatchCombineOnRank(group, c, stream);
        });
      },
      transport == "nccl");
}

GPU_TEST(dispatch_combine_cuda_tensors_on_1_2_4_8_ranks) {
  DispatchOptions aligned;
  aligned.expert_alignment = 4;
  DispatchOptions capped;
  capped.expert_alignment = 8;
  capped.expert_capacity = 6;
  DispatchOptions padded = capped;
  padded.pad_to_capacity = true;
  DispatchOptions sync_free = padded;
  sync_free.sync_free = true;
  DispatchOptions token_major;
  token_major.layout = BatchLayout::kTokenMajor;
  DispatchOptions token_major_capped = token_major;
  token_major_capped.expert_capacity = 6;  // refusals show as -1 ids and zero weights
  for (int ranks : {1, 2, 4, 8}) {
    for (DType idx_dtype : {DType::kI32, DType::kI64}) {
      dispatchCombineRanks(ranks, {idx_dtype, aligned});
      dispatchCombineRanks(ranks, {idx_dtype, token_major_capped});
    }
    dispatchCombineRanks(ranks, {DType::kI32, capped});
    dispatchCombineRanks(ranks, {DType::kI32, padded});
    dispatchCombineRanks(ranks, {DType::kI32, sync_free});
    dispatchCombineRanks(ranks, {DType::kI64, sync_free});  // staged: the counts go to the GPU
    dispatchCombineRanks(ranks, {DType::kI32, token_major});
  }
}

void fp8DispatchRanks(int ranks, const DispatchOptions& options,
                      const std::string& transport = "local") {
  std::printf("         fp8 %s ranks=%d capacity=%lld%s\n", transport.c_str(), ranks,
              static_cast<long long>(options.expert_capacity),
              options.layout == BatchLayout::kTokenMajor ? " token-major" : "");
  std::fflush(stdout);
  LocalWorld world(ranks);
  onThreads(ranks, [&](int rank) {
    onStream([&](cudaStream_t stream) {
      Group group = Group::create(world, rank, fp8GroupConfig(transport));
      checkFp8DispatchOnRank(group, options, stream);
    });
  });
}

GPU_TEST(fp8_dispatch_gpu_native_on_1_2_4_8_ranks) {
  const CaseOptions o = caseOptions(5);
  for (int ranks : {1, 2, 4, 8}) {
    for (const DispatchOptions& options : {o.aligned, o.capped, o.token_major, o.sync_free}) {
      fp8DispatchRanks(ranks, options);
    }
  }
}

// The same engine cases with the call tensors from the built-in stream-ordered pool and from an
// application's allocator: the results must not change, and every block goes back.
GPU_TEST(dispatch_combine_with_stream_ordered_and_application_allocators) {
  DispatchOptions aligned;
  aligned.expert_alignment = 4;
  const auto ledger = gpuLedgerAllocator();
  for (const std::shared_ptr<DeviceAllocator>& allocator :
       {streamOrderedDeviceAllocator(), std::shared_ptr<DeviceAllocator>(ledger)}) {
    std::printf("         allocator: %s\n", allocator->name());
    const AllocatorInForce in_force(allocator);
    for (int ranks : {1, 2, 4}) dispatchCombineRanks(ranks, {DType::kI32, aligned});
    dispatchCombineRanks(2, {DType::kI64, aligned});  // staged: outputs copied to the GPU
    const Tensor logits = onGpu(randomHost({300, 64}, DType::kF32));
    RouterOptions o;
    o.topk = 4;
    o.capacity_factor = 1.0;
    o.overflow = OverflowPolicy::kReroute;
    const Routing r = Router(o).route(logits.view());
    GPU_CHECK(r.topk_idx.device().isCuda(), "the routing must stay on the GPU");
  }
  CUDA_OK(cudaDeviceSynchronize());
  const testing::LedgerAllocator::Counts c = ledger->counts();
  GPU_CHECK(c.allocations > 0, "the application's allocator was never called");
  GPU_CHECK(c.live == 0, c.live << " blocks of " << c.allocations << " never went back");
  GPU_CHECK(c.mismatches == 0,
            c.mismatches << " releases with other bytes, GPU or stream than allocated");
}

// The nccl transport with one rank per GPU (as many as this machine has), against the CPU engine.
GPU_TEST(dispatch_combine_over_nccl_one_rank_per_gpu) {
#if !defined(MOECOMM_TEST_NCCL)
  std::printf("         skipped: this build has no NCCL\n");
  return;
#endif
  const CaseOptions o = caseOptions(6);
  const int ranks = gpuCount();
  for (const DispatchOptions& options : {o.aligned, o.capped, o.token_major, o.sync_free}) {
    dispatchCombineRanks(ranks, {DType::kI32, options}, "nccl");
  }
  dispatchCombineRanks(ranks, {DType::kI64, o.aligned}, "nccl");  // staged on an nccl group
}

// The ucx transport moves host memory only: CUDA tensors are staged through pinned host memory
// (whatever the id type), and the results must be those of the host engine all the same.
GPU_TEST(dispatch_combine_over_ucx_staged_through_host_memory) {
  if ((builtTransports() & kTransportUcx) == 0) {
    std::printf("         skipped: this build has no UCX\n");
    return;
  }
  const CaseOptions o = caseOptions(6);
  for (int ranks : {2, 4}) {
    for (const DispatchOptions& options : {o.aligned, o.capped, o.token_major, o.sync_free}) {
      dispatchCombineRanks(ranks, {DType::kI32, options}, "ucx");
    }
    dispatchCombineRanks(ranks, {DType::kI64, o.aligned}, "ucx");
    fp8DispatchRanks(ranks, o.capped, "ucx");
  }
}

// Bad routing on one rank fails the GPU-native dispatch on every rank: that rank with its own
// message, the others naming it, and nobody waits out the deadline.
GPU_TEST(native_dispatch_reports_bad_routing_on_every_rank) {
  for (int bad_kind : {0, 1}) {  // an id past E, an expert named twice in one token
    LocalWorld world(3);
    onThreads(3, [&](int rank) {
      Group group = Group::create(world, rank, {6, 8, DType::kF32, 2, 30000, "local"});
      Dispatcher d(group);
      Tensor idx = Tensor::empty({4, 2}, DType::kI32);
      for (int i = 0; i < 8; ++i) idx.as<int32_t>()[i] = i % 6;
      if (rank == 2) {
        idx.as<int32_t>()[5] = bad_kind == 0 ? 6 : idx.as<int32_t>()[4];
      }
      const Tensor x = onGpu(randomHost({4, 8}, DType::kF32));
      const Tensor w = onGpu(randomHost({4, 2}, DType::kF32));
      const Tensor didx = onGpu(idx);
      bool threw = false;
      try {
        (void)d.dispatch(x.view(), didx.view(), w.view());
      } catch (const Error& e) {
        const std::string what = e.what();
        threw = rank == 2 ? e.code() == StatusCode::kInvalidArgument &&
                                what.find("topk_idx[2, 1]") != std::string::npos
                          : e.code() == StatusCode::kRemoteError &&
                                what.find("rank 2") != std::string::npos;
        if (!threw) std::printf("         rank %d got: %s\n", rank, what.c_str());
      }
      GPU_CHECK(threw, "rank " << rank << " must fail (bad kind " << bad_kind << ")");
    });
  }
}

// Sync-free dispatch cannot refuse bad ids before it returns: every rank's dispatch succeeds,
// an id past E is routed nowhere (the batch equals the host engine's with that id as -1), and
// collectCounts raises the error on the rank that made it, naming the slot.
GPU_TEST(sync_free_dispatch_defers_bad_routing_to_collect_counts) {
  for (int bad_kind : {0, 1}) {  // an id past E, an expert named twice in one token
    LocalWorld world(3);
    onThreads(3, [&](int rank) {
      Group group = Group::create(world, rank, {6, 8, DType::kF32, 2, 30000, "local"});
      DispatchOptions o;
      o.expert_capacity = 8;
      o.pad_to_capacity = true;
      o.sync_free = true;
      Dispatcher host_d(group, o), dev_d(group, o);
      Tensor idx = Tensor::empty({4, 2}, DType::kI32);
      for (int i = 0; i < 8; ++i) idx.as<int32_t>()[i] = (i + rank) % 6;
      Tensor clean = onHost(idx.view());  // what the host engine gets: the bad slot unused
      if (rank == 2) idx.as<int32_t>()[5] = bad_kind == 0 ? 6 : idx.as<int32_t>()[4];
      if (rank == 2 && bad_kind == 0) clean.as<int32_t>()[5] = -1;
      const Tensor x = randomHost({4, 8}, DType::kF32), w = randomHost({4, 2}, DType::kF32);
      ExpertBatch db = dev_d.dispatch(onGpu(x).view(), onGpu(idx).view(), onGpu(w).view());
      const std::string tag =
          "bad kind " + std::to_string(bad_kind) + " rank " + std::to_string(rank);
      if (bad_kind == 0) {
        const ExpertBatch hb = host_d.dispatch(x.view(), clean.view(), w.view());
        GPU_CHECK(sameBytes(hb.x.view(), onHost(db.x.view()).view()) &&
                      sameBytes(hb.row_weights.view(), onHost(db.row_weights.view()).view()),
                  tag << ": an id past E must be routed nowhere");
      }
      if (rank == 2) {
        GPU_CHECK(
            throwsWith([&] { collectCounts(db); }, StatusCode::kInvalidArgument, "topk_idx[2, 1]"),
            tag << ": collectCounts must raise the bad slot");
        GPU_CHECK(db.expert_counts.empty(), tag << ": a failed collectCounts fills nothing");
      } else {
        collectCounts(db);
        GPU_CHECK(db.expert_counts.size() == 2 && db.refused >= 0,
                  tag << ": collectCounts must fill the counts");
      }
    });
  }
}

// The emulation counts, per thread, each call that would make the host wait for a GPU; on a GPU
// the symbol is absent. A host function holding the stream shows the same thing on both (the
// emulation runs each stream's work on a thread of its own, as a GPU would).
extern "C" unsigned long long moecommEmulatedHostWaits(void) __attribute__((weak));

// A stream held by a host function until the test lets it go, or 20 s pass, so that a call
// that waits for the stream fails the case instead of hanging it: the stream is still held
// when the calls return only if none of them waited for it.
struct StreamGate {
  std::atomic<bool> open{false};
  std::atomic<bool> done{false};  // the host function returned: the stream moved on
  static void CUDART_CB hold(void* self) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    auto* gate = static_cast<StreamGate*>(self);
    while (!gate->open.load() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    gate->done = true;
  }
};

// Sync-free dispatch, combine and both backward passes never make the host wait for the GPU
// (the bar: only exact-size dispatch's count exchange may). Outputs are sized beforehand
// and tensors come from the stream-ordered pool, so no cudaFree runs in between. The exact-size
// dispatch of the same inputs must wait, or the check could not fail.
GPU_TEST(sync_free_dispatch_and_combine_never_wait_for_the_gpu) {
  const bool emulated = moecommEmulatedHostWaits != nullptr;
  const AllocatorInForce in_force(streamOrderedDeviceAllocator());
  for (int ranks : {1, 2, 4}) {
    std::printf("         ranks=%d (held stream%s)\n", ranks, emulated ? ", counted waits" : "");
    std::fflush(stdout);
    LocalWorld world(ranks);
    onThreads(ranks, [&](int rank) {
      onStream([&](cudaStream_t stream) {
        const ExecContext ctx{stream};
        GroupConfig config = engineGroupConfig("local");
        Group group = Group::create(world, rank, config);
        const CaseOptions o = caseOptions(6);
        Dispatcher d(group, o.sync_free);
        Dispatcher exact(group, o.capped);
        const int64_t tokens = 20 + 7 * rank, hidden = config.hidden;
        const int topk = config.topk;
        Tensor idx = Tensor::empty({tokens, topk}, DType::kI32);
        for (int64_t i = 0; i < tokens * topk; ++i) {
          idx.as<int32_t>()[i] = static_cast<int32_t>((i / topk * 5 + (i % topk) * 3 + rank) % 16);
        }
        const Tensor x = onGpu(randomHost({tokens, hidden}, DType::kBF16), stream);
        const Tensor didx = onGpu(idx, stream);
        const Tensor w = onGpu(randomHost({tokens, topk}, DType::kF32), stream);
        const Tensor grad_out = onGpu(randomHost({tokens, hidden}, DType::kBF16), stream);
        // One warm-up call sizes the dispatcher's buffers; the outputs of the measured calls
        // exist before them.
        const ExpertBatch warm = d.dispatch(x.view(), didx.view(), w.view(), ctx);
        const int64_t rows = warm.x.dim(0);
        Tensor out = Tensor::empty({tokens, hidden}, DType::kBF16, Device::cuda(0), ctx);
        Tensor grad_x = Tensor::empty({tokens, hidden}, DType::kBF16, Device::cuda(0), ctx);
        Tensor grad_y = Tensor::empty({rows, hidden}, DType::kBF16, Device::cuda(0), ctx);
        Tensor grad_w = Tensor::empty({tokens, topk}, DType::kF32, Device::cuda(0), ctx);
        d.combine(warm.x.view(), warm.handle, out.view(), ctx);
        d.dispatchBackward(warm.x.view(), warm.handle, grad_x.view(), ctx);
        d.combineBackward(grad_out.view(), warm.x.view(), warm.handle, grad_y.view(), grad_w.view(),
                          ctx);
        CUDA_OK(cudaStreamSynchronize(stream));

        StreamGate gate;
        const unsigned long long before = emulated ? moecommEmulatedHostWaits() : 0;
        CUDA_OK(cudaLaunchHostFunc(stream, &StreamGate::hold, &gate));
        {
          const ExpertBatch b = d.dispatch(x.view(), didx.view(), w.view(), ctx);
          d.combine(b.x.view(), b.handle, out.view(), ctx);
          d.dispatchBackward(b.x.view(), b.handle, grad_x.view(), ctx);
          d.combineBackward(grad_out.view(), b.x.view(), b.handle, grad_y.view(), grad_w.view(),
                            ctx);
          const bool held = !gate.done.load();
          const unsigned long long waits = emulated ? moecommEmulatedHostWaits() - before : 0;
          gate.open = true;
          GPU_CHECK(held && waits == 0,
                    "rank " << rank << ": sync-free dispatch and combine waited for the GPU ("
                            << (held ? std::to_string(waits) + " counted waits"
                                     : std::string("the held stream ran first"))
                            << ")");
          CUDA_OK(cudaStreamSynchronize(stream));
        }
        if (emulated) {
          const unsigned long long mark = moecommEmulatedHostWaits();
          (void)exact.dispatch(x.view(), didx.view(), w.view(), ctx);
          GPU_CHECK(moecommEmulatedHostWaits() > mark,
                    "the exact-size dispatch must count its one wait, or this check cannot fail");
        }
      });
    });
  }
}

// The emulation's stream delays (no-ops on a GPU, where the symbols are absent).
extern "C" int moecommEmulatedSetJitter(int micros) __attribute__((weak));
extern "C" int moecommEmulatedSetStreamDelay(cudaStream_t stream, int micros) __attribute__((weak));

struct StreamJitter {
  explicit StreamJitter(int micros) {
    if (moecommEmulatedSetJitter != nullptr) previous = moecommEmulatedSetJitter(micros);
  }
  ~StreamJitter() {
    if (moecommEmulatedSetJitter != nullptr) moecommEmulatedSetJitter(previous);
  }
  int previous = 0;
};

// Two-batch overlap: several dispatches in flight before their combines, with no host read in
// between, so a rank's stream may run a whole call ahead of a peer's. Every call reuses the
// dispatcher's buffers; each batch and each combined output must still be the host engine's.
// A call that refilled a buffer before the peers had read it would hand them the next batch's
// rows. In the emulation, `slow_odd_ranks` delays every piece of the odd ranks' stream work, so
// the even ranks' streams run calls ahead of them every time.
void dispatchesInFlight(int ranks, bool sync_free, bool slow_odd_ranks) {
  constexpr int kBatches = 4;
  LocalWorld world(ranks), host_world(ranks);
  onThreads(ranks, [&](int rank) {
    onStream([&](cudaStream_t stream) {
      if (slow_odd_ranks && rank % 2 == 1 && moecommEmulatedSetStreamDelay != nullptr) {
        moecommEmulatedSetStreamDelay(stream, 2000);
      }
      const ExecContext ctx{stream};
      const GroupConfig config = engineGroupConfig("local");
      Group group = Group::create(world, rank, config);
      Group host_group = Group::create(host_world, rank, config);
      const CaseOptions o = caseOptions(6);
      Dispatcher d(group, sync_free ? o.sync_free : o.capped);
      Dispatcher h(host_group, sync_free ? o.sync_free : o.capped);
      const int64_t hidden = config.hidden;
      const int topk = config.topk;
      std::mt19937 random(static_cast<unsigned>(97 + rank));
      std::vector<Tensor> x, idx, w, dx, didx, dw;
      for (int b = 0; b < kBatches; ++b) {
        const int64_t tokens = 9 + 5 * b + 3 * rank;
        Tensor ids = Tensor::empty({tokens, topk}, DType::kI32);
        for (int64_t t = 0; t < tokens; ++t) {
          const int first = static_cast<int>(random() % 16);
          for (int j = 0; j < topk; ++j) {
            ids.as<int32_t>()[t * topk + j] = (first + 5 * j) % 16;  // distinct per token
          }
        }
        x.push_back(randomHost({tokens, hidden}, DType::kBF16));
        idx.push_back(ids);
        w.push_back(randomHost({tokens, topk}, DType::kF32));
        dx.push_back(onGpu(x.back(), stream));
        didx.push_back(onGpu(ids, stream));
        dw.push_back(onGpu(w.back(), stream));
      }
      std::vector<ExpertBatch> batches, host_batches;
      std::vector<Tensor> outs;
      for (int b = 0; b < kBatches; ++b) {
        batches.push_back(d.dispatch(dx[b].view(), didx[b].view(), dw[b].view(), ctx));
      }
      for (int b = 0; b < kBatches; ++b) {
        outs.push_back(d.combine(batches[b].x.view(), batches[b].handle, ctx));
      }
      // Every collective call first, then the checks: a rank whose check fails leaves no peer
      // waiting out the deadline for its next call.
      std::vector<Tensor> wants;
      for (int b = 0; b < kBatches; ++b) {
        host_batches.push_back(h.dispatch(x[b].view(), idx[b].view(), w[b].view()));
        wants.push_back(h.combine(host_batches[b].x.view(), host_batches[b].handle));
      }
      for (int b = 0; b < kBatches; ++b) {
        const std::string tag = "rank " + std::to_string(rank) + " batch " + std::to_string(b);
        GPU_CHECK(sameBytes(host_batches[b].x.view(), onHost(batches[b].x.view()).view()),
                  tag << ": dispatched rows differ");
        GPU_CHECK(sameBytes(wants[b].view(), onHost(outs[b].view()).view()),
                  tag << ": combined output differs");
      }
    });
  });
}

// In the emulation the streams drift apart twice over: with the odd ranks' streams slowed, and
// at random (StreamJitter).
GPU_TEST(dispatches_in_flight_reuse_buffers_only_after_the_peers_read_them) {
  for (const bool slow_odd_ranks : {true, false}) {
    const StreamJitter jitter(slow_odd_ranks ? 0 : 500);
    for (int ranks : {2, 4}) {
      for (const bool sync_free : {false, true}) {
        std::printf("         ranks=%d %s, %s\n", ranks, sync_free ? "sync-free" : "exact",
                    slow_odd_ranks ? "odd ranks' streams slowed" : "streams jittered");
        std::fflush(stdout);
        dispatchesInFlight(ranks, sync_free, slow_odd_ranks);
      }
    }
  }
}

// One rank on the GPU-native path and one on the host path send different operations: both must
// fail with an error naming the other rank, not hang and not mix the two layouts. The deadline is
// short so that a rank left waiting (the other failure mode) fails the case quickly.
GPU_TEST(native_and_host_ranks_in_one_call_fail_on_both) {
  LocalWorld world(2);
  onThreads(2, [&](int rank) {
    Group group = Group::create(world, rank, {4, 8, DType::kF32, 2, 5000, "local"});
    Dispatcher d(group);
    Tensor idx = Tensor::empty({3, 2}, DType::kI32);
    for (int i = 0; i < 6; ++i) idx.as<int32_t>()[i] = i % 4;
    const Tensor x = randomHost({3, 8}, DType::kF32);
    const Tensor w = randomHost({3, 2}, DType::kF32);
    const Tensor dx = onGpu(x), didx = onGpu(idx), dw = onGpu(w);
    std::string what;
    try {
      if (rank == 0) {
        (void)d.dispatch(dx.view(), didx.view(), dw.view());  // GPU-native
      } else {
        (void)d.dispatch(x.view(), idx.view(), w.view());  // the host engine
      }
    } catch (const Error& e) {
      what = e.what();
    }
    std::printf("         rank %d: %s\n", rank, what.empty() ? "(no error)" : what.c_str());
    const std::string peer = "rank " + std::to_string(1 - rank);
    GPU_CHECK(!what.empty() && what.find(peer) != std::string::npos,
              "rank " << rank << " must fail naming " << peer);
  });
}

// ------------------------------------------------------------------------------ grouped GEMM

float valueAt(const Tensor& t, int64_t i) {
  return t.dtype() == DType::kBF16 ? numeric::bf16ToFloat(t.as<uint16_t>()[i]) : t.as<float>()[i];
}

// The same values as f32 (the CPU grouped GEMM takes f32 weights and outputs).
Tensor asF32(const Tensor& t) {
  std::vector<int64_t> shape(t.view().shape, t.view().shape + t.view().ndim);
  Tensor out = Tensor::empty(shape, DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) out.as<float>()[i] = valueAt(t, i);
  return out;
}

GPU_TEST(grouped_gemm_cuda_matches_cpu) {
  const std::vector<int64_t> counts = {5, 0, 33, 1, 17};
  std::vector<int64_t> offsets = {0};
  for (int64_t c : counts) offsets.push_back(offsets.back() + (c + 7) / 8 * 8);
  const int64_t rows = offsets.back() + 3;  // rows past the last block must come out zero too
  const int64_t E = static_cast<int64_t>(counts.size());
  const int64_t K = 24;
  const int64_t N = 40;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const float tol = dtype == DType::kBF16 ? 2e-2f : 1e-4f;
    for (GemmForm form : {GemmForm::kNN, GemmForm::kNT, GemmForm::kTN}) {
      const bool tn = form == GemmForm::kTN;
      const Tensor a = tn ? randomHost({rows, K}, dtype)
                          : randomHost({rows, form == GemmForm::kNN ? K : N}, dtype);
      const Tensor b = tn ? randomHost({rows, N}, dtype) : randomHost({E, K, N}, dtype);
      const Tensor c0 = tn ? randomHost({E, K, N}, DType::kF32)
                           : Tensor::zeros({rows, form == GemmForm::kNN ? N : K}, DType::kF32);
      const float beta = tn ? 0.5f : 0.0f;
      // CPU: A as given (f32 or bf16), B and C in f32.
      Tensor c_host = asF32(c0);
      groupedGemm(form, a.view(), asF32(b).view(), c_host.view(), counts, offsets, beta);
      // GPU: A and B in `dtype`, C in f32; C poisoned unless kTN accumulates into it.
      Tensor c_dev = tn ? onGpu(c0) : poisoned({c0.dim(0), c0.dim(1)}, DType::kF32);
      groupedGemm(form, onGpu(a).view(), onGpu(b).view(), c_dev.view(), counts, offsets, beta);
      CUDA_OK(cudaDeviceSynchronize());
      const Tensor got = onHost(c_dev.view());
      for (int64_t i = 0; i < c_host.numel(); ++i) {
        const float want = c_host.as<float>()[i];
        const float g = got.as<float>()[i];
        GPU_CHECK(std::fabs(g - want) <= tol * (1.0f + std::fabs(want)),
                  "form " << static_cast<int>(form) << " dtype " << dtypeName(dtype) << " element "
                          << i << ": want " << want << " got " << g);
      }
    }
  }
  // Operands on different devices are refused with a message naming the operand.
  bool threw = false;
  try {
    const Tensor a = onGpu(randomHost({8, K}, DType::kF32));
    const Tensor b = randomHost({1, K, N}, DType::kF32);
    Tensor c = Tensor::empty({8, N}, DType::kF32, Device::cuda(0));
    groupedGemm(GemmForm::kNN, a.view(), b.view(), c.view(), {8}, {0, 8});
  } catch (const Error& e) {
    threw = e.code() == StatusCode::kInvalidArgument;
  }
  GPU_CHECK(threw, "B on the host with A on the GPU must be refused");
}

}  // namespace
}  // namespace moecomm::gputest

int main(int argc, char** argv) {
  return moecomm::gputest::runAll(argc, argv);
}
