// The experts and the whole MoE layer with CUDA tensors, against the same calls on host tensors:
// ExpertMlp forward and backward (both activations, f32 and bf16 inputs, empty experts, padding),
// MoeLayer forward and backward on 2 ranks sharing one GPU, and the expert-bias update. GEMMs sum
// in another order in cuBLAS than in BLAS, so values agree to a tolerance, not bit for bit.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "moecomm/error.hpp"
#include "moecomm/experts.hpp"
#include "moecomm/group.hpp"
#include "moecomm/moe_layer.hpp"
#include "moecomm/router.hpp"
#include "tests/common/bf16_grid.hpp"
#include "tests/gpu/gpu_test.hpp"
#include "tests/gpu/ledger_on_gpu.hpp"
#include "tests/gpu/tensors.hpp"

namespace moecomm::gputest {
namespace {

// Writes host values into a parameter of either device.
void setParameter(const Tensor& param, const Tensor& host) {
  GPU_CHECK(param.bytes() == host.bytes(), "parameter size");
  if (param.device().isCuda()) {
    CUDA_OK(cudaMemcpy(param.data(), host.data(), host.bytes(), cudaMemcpyHostToDevice));
  } else {
    std::memcpy(param.data(), host.data(), host.bytes());
  }
}

// The largest |want - got| / (1 + |want|), and where.
void expectClose(const TensorView& want_view, const TensorView& got_view, float tol,
                 const std::string& what) {
  const Tensor want = onHost(want_view);
  const Tensor got = onHost(got_view);
  GPU_CHECK(want.numel() == got.numel(), what << ": " << want.numel() << " vs " << got.numel());
  for (int64_t i = 0; i < want.numel(); ++i) {
    const float a = want.as<float>()[i];
    const float b = got.as<float>()[i];
    GPU_CHECK(std::isfinite(b) && std::fabs(a - b) <= tol * (1.0f + std::fabs(a)),
              what << " [" << i << "]: CPU " << a << ", GPU " << b);
  }
}

GPU_TEST(expert_mlp_cuda_matches_cpu) {
  const std::vector<int64_t> counts = {5, 0, 19, 1};
  std::vector<int64_t> offsets = {0};
  for (int64_t c : counts) offsets.push_back(offsets.back() + (c + 7) / 8 * 8);
  const int64_t rows = offsets.back() + 3;  // rows past the last block: ignored in, zero out
  const int hidden = 40, ffn = 24;
  cudaStream_t stream = nullptr;  // non-blocking: nothing may rely on the default stream
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const ExecContext ctx{stream};
  for (Activation act : {Activation::kSwiGLU, Activation::kGelu}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const std::string tag =
          std::string(act == Activation::kSwiGLU ? "swiglu " : "gelu ") + dtypeName(dtype);
      ExpertMlpConfig config{hidden, ffn, static_cast<int>(counts.size()), act};
      ExpertMlp host(config);
      config.device = Device::cuda(0);
      ExpertMlp dev(config);
      GPU_CHECK(dev.w_in().device().isCuda() && dev.grad_w_out().device().isCuda(),
                tag << ": the weights must live on the GPU");
      const float in_bound = 1.0f / std::sqrt(float(hidden));
      const float out_bound = 1.0f / std::sqrt(float(ffn));
      const int64_t E = config.num_experts;
      const int64_t in_cols = act == Activation::kSwiGLU ? 2 * ffn : ffn;
      const Tensor w_in = randomHost({E, hidden, in_cols}, DType::kF32, -in_bound, in_bound);
      const Tensor w_out = randomHost({E, ffn, hidden}, DType::kF32, -out_bound, out_bound);
      // Gradients start non-zero: backward must add into them, not overwrite.
      const Tensor g_in0 = randomHost({E, hidden, in_cols}, DType::kF32);
      const Tensor g_out0 = randomHost({E, ffn, hidden}, DType::kF32);
      for (ExpertMlp* m : {&host, &dev}) {
        setParameter(m->w_in(), w_in);
        setParameter(m->w_out(), w_out);
        setParameter(m->grad_w_in(), g_in0);
        setParameter(m->grad_w_out(), g_out0);
      }
      const Tensor x = randomHost({rows, hidden}, dtype);
      const Tensor y_host = host.forward(x.view(), counts, offsets);
      const Tensor dx = onGpu(x, stream);  // named: it must outlive the work queued on it
      const Tensor y_dev = dev.forward(dx.view(), counts, offsets, ctx);
      GPU_CHECK(y_dev.device().isCuda(), tag << ": the output must be on the GPU");
      CUDA_OK(cudaStreamSynchronize(stream));
      expectClose(y_host.view(), y_dev.view(), 1e-4f, tag + " y");
      const Tensor y_back = onHost(y_dev.view());
      for (size_t e = 0; e <= counts.size(); ++e) {
        const int64_t begin = e < counts.size() ? offsets[e] + counts[e] : offsets.back();
        const int64_t end = e < counts.size() ? offsets[e + 1] : rows;
        for (int64_t i = begin * hidden; i < end * hidden; ++i) {
          GPU_CHECK(y_back.as<float>()[i] == 0.0f, tag << ": padding row element " << i);
        }
      }
      const Tensor gy = randomHost({rows, hidden}, dtype);
      const Tensor gx_host = host.backward(gy.view());
      const Tensor dgy = onGpu(gy, stream);
      const Tensor gx_dev = dev.backward(dgy.view(), ctx);
      CUDA_OK(cudaStreamSynchronize(stream));
      expectClose(gx_host.view(), gx_dev.view(), 1e-4f, tag + " grad_x");
      expectClose(host.grad_w_in().view(), dev.grad_w_in().view(), 1e-4f, tag + " grad_w_in");
      expectClose(host.grad_w_out().view(), dev.grad_w_out().view(), 1e-4f, tag + " grad_w_out");
      dev.zeroGrad(ctx);
      CUDA_OK(cudaStreamSynchronize(stream));
      const Tensor zeroed = onHost(dev.grad_w_in().view());
      for (int64_t i = 0; i < zeroed.numel(); ++i) {
        GPU_CHECK(zeroed.as<float>()[i] == 0.0f, tag << ": zeroGrad left element " << i);
      }
      // An input on the other device is refused, naming both.
      GPU_CHECK(throwsWith([&] { (void)dev.forward(x.view(), counts, offsets, ctx); },
                           StatusCode::kInvalidArgument, "cuda:0"),
                tag << ": a host input to GPU experts must be refused");
    }
  }
  CUDA_OK(cudaStreamDestroy(stream));
}

// compute_dtype bf16 on the GPU (cuBLAS bf16 operands, f32 accumulation) against the same on
// the host (tests/unit/test_bf16_compute.cpp holds that to an f64 reference). On the grid data
// both compute the pre-activations exactly; the GPU's expf may differ from the host's by an ulp,
// which can move an activation across a bf16 rounding boundary and shift that row a little, so
// almost every element must match tightly and all of them loosely. An f32 GPU layer misses the
// tight bound almost everywhere, so the check sees whether the GPU rounded.
GPU_TEST(expert_mlp_bf16_compute_matches_cpu) {
  const std::vector<int64_t> counts = {5, 0, 19, 1};
  std::vector<int64_t> offsets = {0};
  for (int64_t c : counts) offsets.push_back(offsets.back() + (c + 7) / 8 * 8);
  const int64_t rows = offsets.back() + 3;
  const int hidden = 40, ffn = 24;
  onStream(
      [&](cudaStream_t stream) {
        const ExecContext ctx{stream};
        for (Activation act : {Activation::kSwiGLU, Activation::kGelu}) {
          const std::string tag = act == Activation::kSwiGLU ? "swiglu" : "gelu";
          ExpertMlpConfig config{hidden, ffn, static_cast<int>(counts.size()), act};
          config.compute_dtype = DType::kBF16;
          const int64_t E = config.num_experts;
          const int64_t in_cols = act == Activation::kSwiGLU ? 2 * ffn : ffn;
          std::mt19937 grid_rng(act == Activation::kSwiGLU ? 11u : 12u);
          auto grid = [&](std::initializer_list<int64_t> shape) {
            Tensor t = Tensor::empty(shape, DType::kF32);
            const std::vector<float> v =
                testing::gridValues(static_cast<size_t>(t.numel()), grid_rng);
            std::memcpy(t.data(), v.data(), v.size() * sizeof(float));
            return t;
          };
          const Tensor w_in = grid({E, hidden, in_cols}), w_out = grid({E, ffn, hidden});
          const Tensor x = grid({rows, hidden}), gy = grid({rows, hidden});
          ExpertMlp host(config);
          setParameter(host.w_in(), w_in);
          setParameter(host.w_out(), w_out);
          const Tensor y_host = host.forward(x.view(), counts, offsets);
          const Tensor gx_host = host.backward(gy.view());
          for (DType compute : {DType::kBF16, DType::kF32}) {
            ExpertMlpConfig dev_config = config;
            dev_config.device = Device::cuda(0);
            dev_config.compute_dtype = compute;
            ExpertMlp dev(dev_config);
            setParameter(dev.w_in(), w_in);
            setParameter(dev.w_out(), w_out);
            const Tensor dx = onGpu(x, stream), dgy = onGpu(gy, stream);
            const Tensor y_dev = dev.forward(dx.view(), counts, offsets, ctx);
            const Tensor gx_dev = dev.backward(dgy.view(), ctx);
            CUDA_OK(cudaStreamSynchronize(stream));
            struct Pair {
              const char* what;
              const Tensor* want;
              const Tensor* got;
            };
            for (const Pair& p : {Pair{"y", &y_host, &y_dev}, Pair{"grad_x", &gx_host, &gx_dev},
                                  Pair{"grad_w_in", &host.grad_w_in(), &dev.grad_w_in()},
                                  Pair{"grad_w_out", &host.grad_w_out(), &dev.grad_w_out()}}) {
              const Tensor want = onHost(p.want->view());
              const Tensor got = onHost(p.got->view());
              float largest = 0;
              for (int64_t i = 0; i < want.numel(); ++i) {
                largest = std::max(largest, std::fabs(want.as<float>()[i]));
              }
              // Zeros on both sides (padding, idle experts) count for neither side.
              int64_t tight = 0, counted = 0;
              float worst = 0;
              for (int64_t i = 0; i < want.numel(); ++i) {
                const float a = want.as<float>()[i], b = got.as<float>()[i];
                if (a == 0.0f && b == 0.0f) continue;
                const float d = std::fabs(a - b);
                worst = std::max(worst, d);
                ++counted;
                if (d <= 1e-5f * largest) ++tight;
              }
              GPU_CHECK(counted > 0, tag << " " << p.what << ": all zeros");
              const double share = double(tight) / double(counted);
              if (compute == DType::kBF16) {
                GPU_CHECK(share >= 0.95 && worst <= 2e-2f * largest,
                          tag << " " << p.what << ": " << share * 100 << "% within 1e-5, worst "
                              << worst << " of " << largest);
              } else {
                GPU_CHECK(share < 0.5, tag << " " << p.what
                                           << ": the f32 GPU layer matched the bf16 "
                                           << "host layer on " << share * 100 << "% of elements");
              }
            }
          }
        }
      },
      cudaStreamNonBlocking);
}

// Weight operands kept on the GPU (made on one stream, read by forwards on another) give what
// rounding afresh on each forward gives, bit for bit, and a write to the weights shows only after
// invalidateWeightOperands.
GPU_TEST(expert_mlp_kept_weight_operands_on_gpu) {
  const std::vector<int64_t> counts = {6, 0, 13};
  const std::vector<int64_t> offsets = {0, 8, 8, 24};
  const int64_t rows = 26;
  ExpertMlpConfig config{48, 32, 3, Activation::kSwiGLU};
  config.compute_dtype = DType::kBF16;
  config.device = Device::cuda(0);
  const int64_t E = config.num_experts, H = config.hidden, F = config.ffn;
  const Tensor w_in = randomHost({E, H, 2 * F}, DType::kF32, -0.2f, 0.2f);
  const Tensor w_out = randomHost({E, F, H}, DType::kF32, -0.2f, 0.2f);
  const Tensor w_in2 = randomHost({E, H, 2 * F}, DType::kF32, -0.2f, 0.2f);
  const Tensor x = randomHost({rows, H}, DType::kBF16), gy = randomHost({rows, H}, DType::kF32);
  onStream(
      [&](cudaStream_t keep_stream) {
        onStream(
            [&](cudaStream_t stream) {
              const ExecContext ctx{stream};
              ExpertMlp fresh(config), kept(config);
              for (ExpertMlp* m : {&fresh, &kept}) {
                setParameter(m->w_in(), w_in);
                setParameter(m->w_out(), w_out);
              }
              // Kept operands outlive the call and are read on other streams, so they must not
              // come from the stream-ordered allocator in force (a ledger here), just as the
              // parameters do not.
              const auto ledger = gpuLedgerAllocator();
              {
                const AllocatorInForce in_force(ledger);
                kept.cacheWeightOperands(ExecContext{keep_stream});
              }
              GPU_CHECK(kept.weightOperandsCached(), "no operands kept");
              GPU_CHECK(ledger->counts().live == 0,
                        ledger->counts().live << " kept operand blocks from the call's allocator");
              const Tensor dx = onGpu(x, stream), dgy = onGpu(gy, stream);
              // y, grad_x and the weight gradients of one step, on the host.
              auto run = [&](ExpertMlp& m) {
                m.zeroGrad(ctx);
                const Tensor y = m.forward(dx.view(), counts, offsets, ctx);
                const Tensor gx = m.backward(dgy.view(), ctx);
                CUDA_OK(cudaStreamSynchronize(stream));
                return std::vector<Tensor>{onHost(y.view()), onHost(gx.view()),
                                           onHost(m.grad_w_in().view()),
                                           onHost(m.grad_w_out().view())};
              };
              auto same = [](const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
                for (size_t i = 0; i < a.size(); ++i) {
                  if (!sameBytes(a[i].view(), b[i].view())) return false;
                }
                return true;
              };
              const std::vector<Tensor> want = run(fresh);
              GPU_CHECK(same(want, run(kept)), "kept operands differ from fresh ones");
              setParameter(fresh.w_in(), w_in2);
              setParameter(kept.w_in(), w_in2);
              const std::vector<Tensor> want2 = run(fresh);
              GPU_CHECK(!same(want, want2), "new weights changed nothing");
              GPU_CHECK(same(want, run(kept)), "forward did not use the kept operands");
              kept.invalidateWeightOperands();
              GPU_CHECK(same(want2, run(kept)), "after invalidating, the new weights differ");
            },
            cudaStreamNonBlocking);
      },
      cudaStreamNonBlocking);
}

// The whole layer on 2 ranks sharing GPU 0, each with its own stream, against the host layer of
// the same weights on the same ranks: output, losses, load, every gradient. The streams are
// non-blocking (as PyTorch's are), so work the library put on the default stream instead of the
// caller's would race and show. The third case dispatches sync-free (static segments, counts
// left on the GPU), on both layers.
GPU_TEST(moe_layer_cuda_matches_cpu_on_2_ranks) {
  const int ranks = 2;
  for (const auto& [shared, sync_free] : {std::pair{false, false}, {true, false}, {false, true}}) {
    LocalWorld world(ranks);
    onThreads(ranks, [&](int rank) {
      onStream(
          [&](cudaStream_t stream) {
            const ExecContext ctx{stream};
            const GroupConfig g{8, 64, DType::kBF16, 2, 0, "local"};
            Group group = Group::create(world, rank, g);
            MoeLayerConfig lc;
            lc.ffn = 32;
            lc.shared_ffn = shared ? 16 : 0;
            lc.router.topk = 2;
            lc.losses.aux_loss_coeff = 0.01;
            lc.losses.z_loss_coeff = 0.001;
            lc.dispatch.expert_alignment = 8;
            lc.dispatch.expert_capacity = sync_free ? 24 : 0;
            lc.dispatch.pad_to_capacity = sync_free;
            lc.dispatch.sync_free = sync_free;
            MoeLayer host(group, lc);
            lc.device = Device::cuda(0);
            MoeLayer dev(group, lc);
            host.initWeights(11);
            dev.initWeights(11, ctx);
            const std::string tag = std::string(shared ? "shared " : "") +
                                    (sync_free ? "sync-free " : "") + "rank " +
                                    std::to_string(rank);
            expectClose(host.routerWeight().view(), dev.routerWeight().view(), 0.0f,
                        tag + " initial router weight");
            expectClose(host.experts().w_in().view(), dev.experts().w_in().view(), 0.0f,
                        tag + " initial w_in");
            const int64_t tokens = 40 + 17 * rank;
            const Tensor x = randomHost({tokens, g.hidden}, DType::kF32);
            const MoeOutput out_host = host.forward(x.view());
            const Tensor dx = onGpu(x, stream);  // named: it must outlive the work queued on it
            const MoeOutput out_dev = dev.forward(dx.view(), ctx);
            GPU_CHECK(out_dev.out.device().isCuda(), tag << ": the output must be on the GPU");
            CUDA_OK(cudaStreamSynchronize(stream));
            GPU_CHECK(out_host.stats.tokens_per_expert == out_dev.stats.tokens_per_expert,
                      tag << ": the routing differs (a near-tie in the logits?)");
            expectClose(out_host.out.view(), out_dev.out.view(), 2e-4f, tag + " out");
            GPU_CHECK(std::fabs(out_host.losses.aux_loss - out_dev.losses.aux_loss) <= 1e-5 &&
                          std::fabs(out_host.losses.z_loss - out_dev.losses.z_loss) <= 1e-5,
                      tag << ": losses " << out_host.losses.aux_loss << "/"
                          << out_host.losses.z_loss << " vs " << out_dev.losses.aux_loss << "/"
                          << out_dev.losses.z_loss);
            const Tensor grad_out = randomHost({tokens, g.hidden}, DType::kBF16);
            const Tensor gx_host = host.backward(grad_out.view());
            const Tensor d_grad_out = onGpu(grad_out, stream);
            const Tensor gx_dev = dev.backward(d_grad_out.view(), ctx);
            CUDA_OK(cudaStreamSynchronize(stream));
            expectClose(gx_host.view(), gx_dev.view(), 2e-4f, tag + " grad_x");
            expectClose(host.gradRouterWeight().view(), dev.gradRouterWeight().view(), 2e-4f,
                        tag + " router weight gradient");
            expectClose(host.experts().grad_w_in().view(), dev.experts().grad_w_in().view(), 2e-4f,
                        tag + " experts' grad_w_in");
            expectClose(host.experts().grad_w_out().view(), dev.experts().grad_w_out().view(),
                        2e-4f, tag + " experts' grad_w_out");
            if (shared) {
              expectClose(host.sharedExpert()->grad_w_in().view(),
                          dev.sharedExpert()->grad_w_in().view(), 2e-4f, tag + " shared grad_w_in");
            }
            // The aux-loss-free bias update on a GPU bias equals the host's.
            updateExpertBias(host.expertBias().view(), out_host.stats.tokens_per_expert, 0.01f);
            updateExpertBias(dev.expertBias().view(), out_dev.stats.tokens_per_expert, 0.01f, ctx);
            expectClose(host.expertBias().view(), dev.expertBias().view(), 0.0f,
                        tag + " expert bias");
            dev.zeroGrad(ctx);
            CUDA_OK(cudaStreamSynchronize(stream));
            const Tensor zeroed = onHost(dev.gradRouterWeight().view());
            for (int64_t i = 0; i < zeroed.numel(); ++i) {
              GPU_CHECK(zeroed.as<float>()[i] == 0.0f, tag << ": zeroGrad left element " << i);
            }
          },
          cudaStreamNonBlocking);
    });
  }
}

}  // namespace
}  // namespace moecomm::gputest

int main(int argc, char** argv) {
  return moecomm::gputest::runAll(argc, argv);
}
