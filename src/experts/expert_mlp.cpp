// Expert MLPs over the expert-major layout: two grouped GEMMs around an activation, and the
// backward pass that reuses what forward kept.
#include "kernels/cpu/activations.hpp"
#include "kernels/cpu/convert.hpp"
#include "moecomm/experts.hpp"
#include "src/core/status.hpp"
#include "src/experts/grouped_gemm.hpp"

#include <algorithm>
#include <cstring>

namespace moecomm {

namespace {

int64_t inColumns(const ExpertMlpConfig& c) {
  return c.activation == Activation::kSwiGLU ? 2 * int64_t{c.ffn} : c.ffn;
}

Tensor toF32(const TensorView& v) {
  Tensor out = Tensor::empty({v.shape[0], v.shape[1]}, DType::kF32);
  cpu::convertArray(v.data, v.dtype, out.data(), DType::kF32, v.numel());
  return out;
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
  w_in_ = Tensor::zeros({E, H, inColumns(config)}, DType::kF32);
  w_out_ = Tensor::zeros({E, F, H}, DType::kF32);
  grad_w_in_ = Tensor::zeros({E, H, inColumns(config)}, DType::kF32);
  grad_w_out_ = Tensor::zeros({E, F, H}, DType::kF32);
}

void ExpertMlp::zeroGrad() {
  std::fill_n(grad_w_in_.as<float>(), grad_w_in_.numel(), 0.0f);
  std::fill_n(grad_w_out_.as<float>(), grad_w_out_.numel(), 0.0f);
}

Tensor ExpertMlp::forward(const TensorView& x, const std::vector<int64_t>& counts,
                          const std::vector<int64_t>& offsets, ExecContext) {
  if (x.ndim != 2 || x.shape[1] != config_.hidden ||
      (x.dtype != DType::kF32 && x.dtype != DType::kBF16)) {
    throw Error(StatusCode::kInvalidArgument,
                text::format("expert MLP input {} must be f32 or bf16 [rows, {}]", x.describe(),
                             config_.hidden));
  }
  if (counts.size() != static_cast<size_t>(config_.num_experts)) {
    throw Error(StatusCode::kInvalidArgument, text::format("{} expert counts for {} experts",
                                                           counts.size(), config_.num_experts));
  }
  const int64_t R = x.shape[0], F = config_.ffn;
  Tensor x32 = x.dtype == DType::kF32 ? Tensor() : toF32(x);
  const TensorView& xin = x.dtype == DType::kF32 ? x : x32.view();
  Tensor pre = Tensor::empty({R, inColumns(config_)}, DType::kF32);
  throwIfError(runGroupedGemm(GemmForm::kNN, xin, w_in_, pre, counts, offsets, 0.0f));
  Tensor h = Tensor::empty({R, F}, DType::kF32);
  if (config_.activation == Activation::kSwiGLU) {
    cpu::swigluForward(pre.as<float>(), h.as<float>(), R, F);
  } else {
    cpu::geluForward(pre.as<float>(), h.as<float>(), R * F);
  }
  Tensor y = Tensor::empty({R, config_.hidden}, DType::kF32);
  throwIfError(runGroupedGemm(GemmForm::kNN, h, w_out_, y, counts, offsets, 0.0f));
  // Keep the f32 input: a caller's buffer may be reused before backward.
  if (x.dtype == DType::kF32) {
    x_ = Tensor::empty({R, config_.hidden}, DType::kF32);
    if (x.numel() > 0) std::memcpy(x_.data(), x.data, x.bytes());
  } else {
    x_ = std::move(x32);
  }
  pre_ = std::move(pre);
  h_ = std::move(h);
  counts_ = counts;
  offsets_ = offsets;
  return y;
}

Tensor ExpertMlp::backward(const TensorView& grad_y, ExecContext) {
  if (!h_.defined()) {
    throw Error(StatusCode::kInvalidUsage, "ExpertMlp::backward called before forward");
  }
  const int64_t R = h_.dim(0), F = config_.ffn;
  if (grad_y.ndim != 2 || grad_y.shape[0] != R || grad_y.shape[1] != config_.hidden) {
    throw Error(StatusCode::kInvalidArgument,
                text::format("grad_y {} must be [{}, {}] like the forward's output",
                             grad_y.describe(), R, config_.hidden));
  }
  Tensor dh = Tensor::empty({R, F}, DType::kF32);
  throwIfError(runGroupedGemm(GemmForm::kNT, grad_y, w_out_, dh, counts_, offsets_, 0.0f));
  throwIfError(runGroupedGemm(GemmForm::kTN, h_, grad_y, grad_w_out_, counts_, offsets_, 1.0f));
  Tensor dpre = Tensor::empty({R, inColumns(config_)}, DType::kF32);
  if (config_.activation == Activation::kSwiGLU) {
    cpu::swigluBackward(pre_.as<float>(), dh.as<float>(), dpre.as<float>(), R, F);
  } else {
    cpu::geluBackward(pre_.as<float>(), dh.as<float>(), dpre.as<float>(), R * F);
  }
  throwIfError(runGroupedGemm(GemmForm::kTN, x_, dpre, grad_w_in_, counts_, offsets_, 1.0f));
  Tensor dx = Tensor::empty({R, config_.hidden}, DType::kF32);
  throwIfError(runGroupedGemm(GemmForm::kNT, dpre, w_in_, dx, counts_, offsets_, 0.0f));
  return dx;
}

}  // namespace moecomm
