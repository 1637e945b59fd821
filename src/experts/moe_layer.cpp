// The MoE layer: router GEMM and gate, dispatch, grouped expert MLPs, combine, shared expert; and
// the backward pass through all of them in reverse. The same steps on either device: each step
// takes its operands' device (BLAS or cuBLAS, CPU or CUDA kernels), so one code path serves both.
#include "moecomm/moe_layer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>
#include <random>

#include "kernels/cpu/gemm.hpp"
#include "src/core/device.hpp"
#include "src/core/env.hpp"
#include "src/core/stopwatch.hpp"
#include "src/experts/grouped_gemm.hpp"
#include "src/experts/tensor_ops.hpp"
#include "src/group/group_impl.hpp"

namespace moecomm {

struct MoeLayer::State {
  Group group;
  MoeLayerConfig config;
  Router router;
  Dispatcher dispatcher;
  ExpertMlp experts;
  std::optional<ExpertMlp> shared;
  Tensor router_weight, grad_router_weight, expert_bias;

  // Saved by forward for backward.
  Tensor x, logits, y;
  Routing routing;
  ExpertBatch batch;
  std::vector<int64_t> global_load;
  bool forward_done = false;
  MoePhaseTimes backward_times;

  State(Group& g, const MoeLayerConfig& c, const ExpertMlpConfig& expert_config)
      : group(g), config(c), router(c.router), dispatcher(g, c.dispatch), experts(expert_config) {}
};

namespace {

ExpertMlpConfig expertConfig(const Group& group, const MoeLayerConfig& c) {
  return {group.config().hidden, c.ffn,    group.localExperts(),
          c.activation,          c.device, c.compute_dtype};
}

// Ranks that run BLAS on this host at the same time.
int ranksOnHost(const Group& group) {
  if (std::string(group.transportName()) == "local") return group.size();
  for (const char* name :
       {"LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"}) {
    const int64_t n = envInt(name, 0);
    if (n > 0) return static_cast<int>(n);
  }
  return 1;
}

// A matrix [rows, cols] seen as the one expert block [1, rows, cols] of a grouped GEMM.
TensorView asOneExpert(const Tensor& m) {
  TensorView v = m.view();
  v.ndim = 3;
  v.shape[2] = v.shape[1];
  v.shape[1] = v.shape[0];
  v.shape[0] = 1;
  return v;
}

void fillUniform(float* p, int64_t count, std::mt19937_64& rng, float bound) {
  std::uniform_real_distribution<float> dist(-bound, bound);
  for (int64_t i = 0; i < count; ++i) p[i] = dist(rng);
}

// Writes a parameter through a host buffer: itself on the host, a copy for a GPU tensor.
template <typename Fill>
void writeParameter(const Tensor& p, ExecContext context, Fill fill) {
  if (!p.device().isCuda()) {
    fill(p.as<float>());
    return;
  }
  const Tensor host = Tensor::empty({p.numel()}, DType::kF32);
  fill(host.as<float>());
  throwIfError(device::setDevice(p.device().index));
  throwIfError(device::copyAsync(p.data(), host.data(), p.bytes(), device::Direction::kToDevice,
                                 context.stream));
  throwIfError(device::synchronize(context.stream));
}

// The rows each expert's GEMMs run over: its real rows, or, for a sync-free batch whose counts
// stay on the GPU, its whole static segment (padding rows are zeros with weight 0, so their
// outputs and gradient contributions are zero and combine drops them).
std::vector<int64_t> rowsPerExpert(const ExpertBatch& batch) {
  if (!batch.expert_counts.empty()) return batch.expert_counts;
  std::vector<int64_t> rows;
  for (size_t e = 0; e + 1 < batch.expert_offsets.size(); ++e) {
    rows.push_back(batch.expert_offsets[e + 1] - batch.expert_offsets[e]);
  }
  return rows;
}

}  // namespace

MoeLayer::MoeLayer(Group& group, const MoeLayerConfig& config) {
  const GroupConfig& g = group.config();
  if (config.router.topk != g.topk) {
    throw Error(StatusCode::kInvalidArgument,
                text::format("MoeLayerConfig.router.topk={} but the group routes top-{}; they must "
                             "match",
                             config.router.topk, g.topk));
  }
  if (config.shared_ffn < 0) {
    throw Error(StatusCode::kInvalidArgument,
                text::format("shared_ffn must be >= 0, got {}", config.shared_ffn));
  }
  state_ = std::make_unique<State>(group, config, expertConfig(group, config));
  State& s = *state_;
  const Device d = config.device;
  s.router_weight = Tensor::zeros({g.hidden, g.num_experts}, DType::kF32, d);
  s.grad_router_weight = Tensor::zeros({g.hidden, g.num_experts}, DType::kF32, d);
  s.expert_bias = Tensor::zeros({g.num_experts}, DType::kF32, d);
  if (config.shared_ffn > 0)
    s.shared.emplace(ExpertMlpConfig{g.hidden, config.shared_ffn, 1, config.activation, d,
                                     config.compute_dtype});
  cpu::setGemmThreads(defaultGemmThreads(ranksOnHost(group)));
}

MoeLayer::~MoeLayer() = default;
MoeLayer::MoeLayer(MoeLayer&&) noexcept = default;
MoeLayer& MoeLayer::operator=(MoeLayer&&) noexcept = default;

const MoePhaseTimes& MoeLayer::lastBackwardTimes() const noexcept {
  return state_->backward_times;
}
const Tensor& MoeLayer::routerWeight() const noexcept {
  return state_->router_weight;
}
const Tensor& MoeLayer::gradRouterWeight() const noexcept {
  return state_->grad_router_weight;
}
const Tensor& MoeLayer::expertBias() const noexcept {
  return state_->expert_bias;
}
ExpertMlp& MoeLayer::experts() noexcept {
  return state_->experts;
}
ExpertMlp* MoeLayer::sharedExpert() noexcept {
  return state_->shared ? &*state_->shared : nullptr;
}

void MoeLayer::initWeights(uint64_t seed, ExecContext context) {
  State& s = *state_;
  const GroupConfig& g = s.group.config();
  const int64_t H = g.hidden, E = g.num_experts;
  writeParameter(s.router_weight, context, [&](float* p) {
    std::mt19937_64 router_rng(seed);
    fillUniform(p, H * E, router_rng, 1.0f / std::sqrt(float(H)));
  });
  auto init = [&](ExpertMlp& mlp, int first_global, uint64_t stream) {
    const ExpertMlpConfig& c = mlp.config();
    const int64_t in_size = mlp.w_in().numel() / std::max(1, c.num_experts);
    const int64_t out_size = mlp.w_out().numel() / std::max(1, c.num_experts);
    // Each expert's w_in and w_out come from one generator, in that order.
    auto rngOf = [&](int e) {
      return std::mt19937_64(seed ^
                             (stream + 0x9e3779b97f4a7c15ull * uint64_t(first_global + e + 1)));
    };
    std::vector<std::mt19937_64> rngs;
    for (int e = 0; e < c.num_experts; ++e) rngs.push_back(rngOf(e));
    writeParameter(mlp.w_in(), context, [&](float* p) {
      for (int e = 0; e < c.num_experts; ++e)
        fillUniform(p + e * in_size, in_size, rngs[e], 1.0f / std::sqrt(float(c.hidden)));
    });
    writeParameter(mlp.w_out(), context, [&](float* p) {
      for (int e = 0; e < c.num_experts; ++e)
        fillUniform(p + e * out_size, out_size, rngs[e], 1.0f / std::sqrt(float(c.ffn)));
    });
    mlp.invalidateWeightOperands();  // new weights: copies kept for inference are stale
  };
  init(s.experts, s.group.firstLocalExpert(), 1);
  if (s.shared) init(*s.shared, 0, 2);
}

void MoeLayer::zeroGrad(ExecContext context) {
  State& s = *state_;
  throwIfError(ops::zero(s.grad_router_weight, context));
  s.experts.zeroGrad(context);
  if (s.shared) s.shared->zeroGrad(context);
}

MoeOutput MoeLayer::forward(const TensorView& x, ExecContext context) {
  State& s = *state_;
  const GroupConfig& g = s.group.config();
  if (x.ndim != 2 || x.shape[1] != g.hidden ||
      (x.dtype != DType::kF32 && x.dtype != DType::kBF16)) {
    throw Error(
        StatusCode::kInvalidArgument,
        text::format("MoeLayer input {} must be f32 or bf16 [tokens, {}]", x.describe(), g.hidden));
  }
  throwIfError(ops::checkOnDevice("MoeLayer input", x, s.config.device, "MoeLayerConfig.device"));
  s.forward_done = false;
  Stopwatch lap;
  MoePhaseTimes times;
  const int64_t T = x.shape[0], E = g.num_experts;
  const Device d = s.config.device;
  s.x = ops::copyOnDevice(x, DType::kF32, context);
  s.logits = Tensor::empty({T, E}, DType::kF32, d, context);
  throwIfError(runGroupedGemm(GemmForm::kNN, s.x, asOneExpert(s.router_weight), s.logits, {T},
                              {0, T}, 0.0f, context));
  const TensorView bias = s.expert_bias.view();
  s.routing = s.router.route(s.logits, &bias, context);

  MoeOutput result;
  result.stats = s.routing.stats;
  s.global_load.clear();
  if (s.config.losses.aux_loss_coeff != 0.0) s.global_load = globalLoad(s.group, s.routing.stats);
  if (s.config.losses.aux_loss_coeff != 0.0 || s.config.losses.z_loss_coeff != 0.0) {
    result.losses = s.router.losses(s.logits, s.routing, s.config.losses,
                                    s.global_load.empty() ? nullptr : &s.global_load, context);
  }

  times.route_ms = lap.lap();
  const Tensor wire = g.dtype == DType::kF32 ? s.x : ops::copyOnDevice(s.x, g.dtype, context);
  s.batch = s.dispatcher.dispatch(wire, s.routing.topk_idx, s.routing.topk_weights, context);
  times.dispatch_ms = lap.lap();
  s.y = s.experts.forward(s.batch.x, rowsPerExpert(s.batch), s.batch.expert_offsets, context);
  times.experts_ms = lap.lap();
  result.out = s.dispatcher.combine(s.y, s.batch.handle, context);
  times.combine_ms = lap.lap();
  if (s.shared) {
    const Tensor shared = s.shared->forward(s.x, {T}, {0, T}, context);
    throwIfError(ops::addInto(result.out, shared, context));
  }
  times.shared_ms = lap.lap();
  result.times = times;
  s.forward_done = true;
  return result;
}

Tensor MoeLayer::backward(const TensorView& grad_out, ExecContext context) {
  State& s = *state_;
  if (!s.forward_done) {
    throw Error(StatusCode::kInvalidUsage, "MoeLayer::backward needs a successful forward first");
  }
  const GroupConfig& g = s.group.config();
  const int64_t T = s.x.dim(0), H = g.hidden, E = g.num_experts, k = g.topk;
  if (grad_out.ndim != 2 || grad_out.shape[0] != T || grad_out.shape[1] != H ||
      (grad_out.dtype != DType::kF32 && grad_out.dtype != DType::kBF16)) {
    throw Error(StatusCode::kInvalidArgument,
                text::format("grad_out {} must be f32 or bf16 [{}, {}] like the forward's output",
                             grad_out.describe(), T, H));
  }
  throwIfError(ops::checkOnDevice("grad_out", grad_out, s.config.device, "MoeLayerConfig.device"));
  Stopwatch lap;
  MoePhaseTimes& times = s.backward_times;
  times = {};
  const Device d = s.config.device;
  Tensor g_scratch;
  const TensorView& g_out = ops::asF32(grad_out, g_scratch, context);

  // Combine backward: grad_y = w * grad_out on the expert side, grad_w = <grad_out, y>.
  const int64_t R = s.y.dim(0);
  Tensor grad_y = Tensor::empty({R, H}, DType::kF32, d, context);
  Tensor grad_w = Tensor::empty({T, k}, DType::kF32, d, context);
  s.dispatcher.combineBackward(g_out, s.y, s.batch.handle, grad_y, grad_w, context);
  times.combine_ms = lap.lap();
  Tensor grad_rows = s.experts.backward(grad_y, context);
  times.experts_ms = lap.lap();
  Tensor grad_x = Tensor::empty({T, H}, DType::kF32, d, context);
  s.dispatcher.dispatchBackward(grad_rows, s.batch.handle, grad_x, context);
  times.dispatch_ms = lap.lap();

  // The router: logits from the gate's weights and the losses, then the router GEMM's gradients.
  // On a GPU the router's backward is a kernel on our stream (kernels/cuda/router_grad.cu).
  Tensor grad_logits = Tensor::empty({T, E}, DType::kF32, d, context);
  const TensorView grad_w_view = grad_w.view();
  s.router.backward(s.logits, s.routing, &grad_w_view, s.config.losses, grad_logits,
                    s.global_load.empty() ? nullptr : &s.global_load, context);
  throwIfError(runGroupedGemm(GemmForm::kTN, s.x, grad_logits, asOneExpert(s.grad_router_weight),
                              {T}, {0, T}, 1.0f, context));
  Tensor through_router = Tensor::empty({T, H}, DType::kF32, d, context);
  throwIfError(runGroupedGemm(GemmForm::kNT, grad_logits, asOneExpert(s.router_weight),
                              through_router, {T}, {0, T}, 0.0f, context));
  throwIfError(ops::addInto(grad_x, through_router, context));
  times.route_ms = lap.lap();
  if (s.shared) {
    const Tensor shared = s.shared->backward(g_out, context);
    throwIfError(ops::addInto(grad_x, shared, context));
  }
  times.shared_ms = lap.lap();
  return grad_x;
}

}  // namespace moecomm
