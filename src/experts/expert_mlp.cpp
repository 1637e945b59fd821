// Expert MLPs over the expert-major layout: two grouped GEMMs around an activation, and the
// backward pass that reuses what forward kept. The same steps on either device: the operands'
// device picks BLAS or cuBLAS and the CPU or CUDA activation.
#include "moecomm/experts.hpp"
#include "src/core/device.hpp"
#include "src/core/status.hpp"
#include "src/core/tensor_checks.hpp"
#include "src/experts/grouped_gemm.hpp"
#include "src/experts/tensor_ops.hpp"

namespace moecomm {

namespace {

int64_t inColumns(const ExpertMlpConfig& c) {
  return c.activation == Activation::kSwiGLU ? 2 * int64_t{c.ffn} : c.ffn;
}

// Weights as GEMM operands of the compute dtype: the f32 masters themselves for f32. For bf16:
// bf16 on a GPU (cuBLAS takes A and B of one dtype), their bf16 values held in f32 on the host
// (BLAS takes f32 weights); the same products either way. An operand `kept` across forwards
// (cacheWeightOperands) is read on other streams and released from any: on a GPU it comes from
// cudaMalloc, as the parameters do, not from the call's allocator (docs/cuda.md).
Tensor weightOperand(const Tensor& w, DType compute, ExecContext context, bool kept = false) {
  if (compute == DType::kF32) return w;
  Tensor rounded;
  if (kept && w.device().isCuda()) {
    const TensorView& v = w.view();
    rounded =
        Tensor::empty(std::vector<int64_t>(v.shape, v.shape + v.ndim), DType::kBF16, v.device);
    throwIfError(ops::convert(v, rounded.view(), context));
  } else {
    rounded = ops::copyOnDevice(w, DType::kBF16, context);
  }
  return w.device().isCuda() ? rounded : ops::copyOnDevice(rounded, DType::kF32, context);
}

// An activation as a GEMM operand: itself, or rounded to the compute dtype.
Tensor activationOperand(Tensor t, DType compute, ExecContext context) {
  return t.dtype() == compute ? t : ops::copyOnDevice(t, compute, context);
}

}  // namespace

ExpertMlp::ExpertMlp(const ExpertMlpConfig& config) : config_(config) {
  if (config.hidden < 1 || config.ffn < 1 || config.num_experts < 0) {
    throw Error(StatusCode::kInvalidArgument,
                text::format("ExpertMlpConfig needs hidden >= 1, ffn >= 1, num_experts >= 0; got "
                             "hidden={} ffn={} num_experts={}",
                             config.hidden, config.ffn, config.num_experts));
  }
  if (config.compute_dtype != DType::kF32 && config.compute_dtype != DType::kBF16) {
    throw Error(StatusCode::kInvalidArgument,
                text::format("ExpertMlpConfig.compute_dtype must be f32 or bf16, got {}",
                             dtypeName(config.compute_dtype)));
  }
  const int64_t E = config.num_experts, H = config.hidden, F = config.ffn;
  const Device d = config.device;
  w_in_ = Tensor::zeros({E, H, inColumns(config)}, DType::kF32, d);
  w_out_ = Tensor::zeros({E, F, H}, DType::kF32, d);
  grad_w_in_ = Tensor::zeros({E, H, inColumns(config)}, DType::kF32, d);
  grad_w_out_ = Tensor::zeros({E, F, H}, DType::kF32, d);
}

void ExpertMlp::zeroGrad(ExecContext context) {
  throwIfError(ops::zero(grad_w_in_, context));
  throwIfError(ops::zero(grad_w_out_, context));
}

Tensor ExpertMlp::forward(const TensorView& x, const std::vector<int64_t>& counts,
                          const std::vector<int64_t>& offsets, ExecContext context) {
  if (x.ndim != 2 || x.shape[1] != config_.hidden ||
      (x.dtype != DType::kF32 && x.dtype != DType::kBF16)) {
    throw Error(StatusCode::kInvalidArgument,
                text::format("expert MLP input {} must be f32 or bf16 [rows, {}]", x.describe(),
                             config_.hidden));
  }
  throwIfError(ops::checkOnDevice("expert MLP input", x, config_.device, "ExpertMlpConfig.device"));
  if (counts.size() != static_cast<size_t>(config_.num_experts)) {
    throw Error(StatusCode::kInvalidArgument, text::format("{} expert counts for {} experts",
                                                           counts.size(), config_.num_experts));
  }
  const int64_t R = x.shape[0], F = config_.ffn;
  const Device d = config_.device;
  const DType cd = config_.compute_dtype;
  // Keep the input as an operand: a caller's buffer may be reused before backward.
  Tensor x_c = ops::copyOnDevice(x, cd, context);
  Tensor w_in_c = w_in_cached_.defined() ? w_in_cached_ : weightOperand(w_in_, cd, context);
  Tensor w_out_c = w_out_cached_.defined() ? w_out_cached_ : weightOperand(w_out_, cd, context);
  Tensor pre = Tensor::empty({R, inColumns(config_)}, DType::kF32, d, context);
  throwIfError(runGroupedGemm(GemmForm::kNN, x_c, w_in_c, pre, counts, offsets, 0.0f, context));
  Tensor h = Tensor::empty({R, F}, DType::kF32, d, context);
  throwIfError(ops::activationForward(config_.activation, pre, h, context));
  Tensor h_c = activationOperand(std::move(h), cd, context);
  Tensor y = Tensor::empty({R, config_.hidden}, DType::kF32, d, context);
  throwIfError(runGroupedGemm(GemmForm::kNN, h_c, w_out_c, y, counts, offsets, 0.0f, context));
  x_ = std::move(x_c);
  pre_ = std::move(pre);
  h_ = std::move(h_c);
  w_in_c_ = std::move(w_in_c);
  w_out_c_ = std::move(w_out_c);
  counts_ = counts;
  offsets_ = offsets;
  return y;
}

void ExpertMlp::cacheWeightOperands(ExecContext context) {
  if (config_.compute_dtype == DType::kF32) return;  // the masters are the operands
  Tensor w_in_c = weightOperand(w_in_, config_.compute_dtype, context, /*kept=*/true);
  Tensor w_out_c = weightOperand(w_out_, config_.compute_dtype, context, /*kept=*/true);
  // Forwards on other streams read them: the copies must be done before any of them starts.
  if (config_.device.isCuda()) throwIfError(device::synchronize(context.stream));
  w_in_cached_ = std::move(w_in_c);
  w_out_cached_ = std::move(w_out_c);
}

void ExpertMlp::invalidateWeightOperands() noexcept {
  w_in_cached_ = Tensor();
  w_out_cached_ = Tensor();
}

Tensor ExpertMlp::backward(const TensorView& grad_y, ExecContext context) {
  if (!h_.defined()) {
    throw Error(StatusCode::kInvalidUsage, "ExpertMlp::backward called before forward");
  }
  const int64_t R = h_.dim(0), F = config_.ffn;
  if (grad_y.ndim != 2 || grad_y.shape[0] != R || grad_y.shape[1] != config_.hidden ||
      (grad_y.dtype != DType::kF32 && grad_y.dtype != DType::kBF16) ||
      !ops::sameDevice(grad_y.device, config_.device)) {
    throw Error(StatusCode::kInvalidArgument,
                text::format("grad_y {} must be f32 or bf16 [{}, {}] on {}, like the forward's "
                             "output",
                             grad_y.describe(), R, config_.hidden, deviceName(config_.device)));
  }
  const Device d = config_.device;
  const DType cd = config_.compute_dtype;
  // cuBLAS takes A and B of one dtype: every operand meets the others in the compute dtype.
  Tensor g_c;
  const TensorView& g = ops::asDtype(grad_y, cd, g_c, context);
  Tensor dh = Tensor::empty({R, F}, DType::kF32, d, context);
  throwIfError(runGroupedGemm(GemmForm::kNT, g, w_out_c_, dh, counts_, offsets_, 0.0f, context));
  throwIfError(runGroupedGemm(GemmForm::kTN, h_, g, grad_w_out_, counts_, offsets_, 1.0f, context));
  Tensor dpre = Tensor::empty({R, inColumns(config_)}, DType::kF32, d, context);
  throwIfError(ops::activationBackward(config_.activation, pre_, dh, dpre, context));
  const Tensor dpre_c = activationOperand(std::move(dpre), cd, context);
  throwIfError(
      runGroupedGemm(GemmForm::kTN, x_, dpre_c, grad_w_in_, counts_, offsets_, 1.0f, context));
  Tensor dx = Tensor::empty({R, config_.hidden}, DType::kF32, d, context);
  throwIfError(
      runGroupedGemm(GemmForm::kNT, dpre_c, w_in_c_, dx, counts_, offsets_, 0.0f, context));
  return dx;
}

}  // namespace moecomm
