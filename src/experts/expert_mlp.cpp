// Expert MLPs over the expert-major layout: two grouped GEMMs around an activation, and the
// backward pass that reuses what forward kept. The same steps on either device: the operands'
// device picks BLAS or cuBLAS and the CPU or CUDA activation.
#include "moecomm/experts.hpp"
#include "src/core/status.hpp"
#include "src/core/tensor_checks.hpp"
#include "src/experts/grouped_gemm.hpp"
#include "src/experts/tensor_ops.hpp"

namespace moecomm {

namespace {

int64_t inColumns(const ExpertMlpConfig& c) {
  return c.activation == Activation::kSwiGLU ? 2 * int64_t{c.ffn} : c.ffn;
}

}  // namespace

ExpertMlp::ExpertMlp(const ExpertMlpConfig& config) : config_(config) {
  if (config.hidden < 1 || config.ffn < 1 || config.num_experts < 0) {
    throw Error(StatusCode::kInvalidArgument,
                text::format("ExpertMlpConfig needs hidden >= 1, ffn >= 1, num_experts >= 0; got "
                             "hidden={} ffn={} num_experts={}",
                             config.hidden, config.ffn, config.num_experts));
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
  // Keep the f32 input: a caller's buffer may be reused before backward.
  Tensor x32 = ops::copyOnDevice(x, DType::kF32, context);
  Tensor pre = Tensor::empty({R, inColumns(config_)}, DType::kF32, d, context);
  throwIfError(runGroupedGemm(GemmForm::kNN, x32, w_in_, pre, counts, offsets, 0.0f, context));
  Tensor h = Tensor::empty({R, F}, DType::kF32, d, context);
  throwIfError(ops::activationForward(config_.activation, pre, h, context));
  Tensor y = Tensor::empty({R, config_.hidden}, DType::kF32, d, context);
  throwIfError(runGroupedGemm(GemmForm::kNN, h, w_out_, y, counts, offsets, 0.0f, context));
  x_ = std::move(x32);
  pre_ = std::move(pre);
  h_ = std::move(h);
  counts_ = counts;
  offsets_ = offsets;
  return y;
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
  // cuBLAS takes A and B of one dtype: the gradient meets f32 weights and activations in f32.
  Tensor g32;
  const TensorView& g = ops::asF32(grad_y, g32, context);
  Tensor dh = Tensor::empty({R, F}, DType::kF32, d, context);
  throwIfError(runGroupedGemm(GemmForm::kNT, g, w_out_, dh, counts_, offsets_, 0.0f, context));
  throwIfError(runGroupedGemm(GemmForm::kTN, h_, g, grad_w_out_, counts_, offsets_, 1.0f, context));
  Tensor dpre = Tensor::empty({R, inColumns(config_)}, DType::kF32, d, context);
  throwIfError(ops::activationBackward(config_.activation, pre_, dh, dpre, context));
  throwIfError(
      runGroupedGemm(GemmForm::kTN, x_, dpre, grad_w_in_, counts_, offsets_, 1.0f, context));
  Tensor dx = Tensor::empty({R, config_.hidden}, DType::kF32, d, context);
  throwIfError(runGroupedGemm(GemmForm::kNT, dpre, w_in_, dx, counts_, offsets_, 0.0f, context));
  return dx;
}

}  // namespace moecomm
