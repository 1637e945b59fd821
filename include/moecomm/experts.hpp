// The experts' compute over dispatch's expert-major layout: grouped GEMMs and expert MLPs
// (SwiGLU or GELU), forward and backward. Rows of local expert e are
// [offsets[e], offsets[e] + counts[e]) of the batch; rows past a count (alignment padding) are
// outputs of zero and inputs that are ignored. Host tensors run through BLAS, CUDA tensors through
// cuBLAS on the context's stream (docs/cuda.md).
#pragma once

#include <cstdint>
#include <vector>

#include "moecomm/export.hpp"
#include "moecomm/types.hpp"

namespace moecomm {

enum class GemmForm : int32_t {
  kNN = 0,  // C_e[rows, N] = A_e[rows, K] * B_e             B: [E, K, N]   (forward)
  kNT = 1,  // C_e[rows, K] = A_e[rows, N] * B_e^T           B: [E, K, N]   (input gradient)
  kTN = 2,  // C_e = beta * C_e + A_e[rows, K]^T * B_e[rows, N]   C: [E, K, N] (weight gradient)
};

// Every local expert's product in one call. A (and B for kTN) are f32 or bf16 activations,
// converted to f32 per expert; weights and C are f32, accumulation is f32. Experts with zero rows
// cost nothing (for kTN their C_e is only scaled by beta). For kNN/kNT, beta must be 0 and padding
// rows of C are set to zero.
MOECOMM_API void groupedGemm(GemmForm form, const TensorView& a, const TensorView& b,
                             const TensorView& c, const std::vector<int64_t>& counts,
                             const std::vector<int64_t>& offsets, float beta = 0.0f,
                             ExecContext context = {});

// Threads BLAS uses per call (OpenBLAS's setting, process-wide). 0 means MOECOMM_GEMM_THREADS, else
// all cores. MoeLayer sets it on creation to the cores divided by the ranks on this host.
MOECOMM_API void setGemmThreads(int threads);

enum class Activation : int32_t {
  kSwiGLU = 0,  // h = silu(x Wg) * (x Wu); y = h Wd
  kGelu = 1,    // h = gelu(x W1) (erf form); y = h W2
};

struct ExpertMlpConfig {
  int hidden = 0;       // H
  int ffn = 0;          // F, per expert
  int num_experts = 0;  // experts held here (a rank's local experts)
  Activation activation = Activation::kSwiGLU;
  Device device{};  // where the weights and gradients live; forward's input must be there too
  // The GEMMs' operands. kF32: as they are. kBF16: every operand (input, weights, activation,
  // gradients) rounded to bf16 first and accumulated in f32: cuBLAS's tensor cores on a GPU,
  // the same arithmetic through BLAS on the host. Weights, gradients and the activation
  // function's inputs and outputs stay f32 either way.
  DType compute_dtype = DType::kF32;
};

// The MLPs of num_experts experts, weights in one contiguous f32 allocation per matrix:
// w_in [E, H, F] for GELU or [E, H, 2F] for SwiGLU (gate columns, then up columns), w_out [E, F,
// H]. On a GPU nothing in forward or backward waits for the stream; the weights are written by
// the caller (a copy into w_in().data()) and read in stream order.
class MOECOMM_API ExpertMlp {
 public:
  explicit ExpertMlp(const ExpertMlpConfig& config);  // zero weights and gradients

  const ExpertMlpConfig& config() const noexcept { return config_; }
  const Tensor& w_in() const noexcept { return w_in_; }
  const Tensor& w_out() const noexcept { return w_out_; }
  const Tensor& grad_w_in() const noexcept { return grad_w_in_; }
  const Tensor& grad_w_out() const noexcept { return grad_w_out_; }
  void zeroGrad(ExecContext context = {});

  // x [R, H] f32 or bf16 in the expert-major layout, on the config's device -> y [R, H] f32 there.
  // Keeps what backward needs.
  Tensor forward(const TensorView& x, const std::vector<int64_t>& counts,
                 const std::vector<int64_t>& offsets, ExecContext context = {});
  // grad_y [R, H] (f32 or bf16) of the last forward -> grad_x [R, H] f32; adds the weight
  // gradients into grad_w_in and grad_w_out.
  Tensor backward(const TensorView& grad_y, ExecContext context = {});

  // For inference, where the weights stay as they are between forwards. With compute_dtype bf16,
  // every forward rounds w_in and w_out to bf16 afresh (3 x H x F weights per expert read as f32
  // and written as bf16). cacheWeightOperands rounds them once, now, on the context's stream, into
  // long-lived memory (cudaMalloc on a GPU, as the parameters), and waits for it; later forwards,
  // on any stream, use those copies until invalidateWeightOperands(). A write to
  // w_in or w_out after the call (loading, an optimizer step) is not seen until then. With
  // compute_dtype f32 the masters are the operands and both calls change nothing.
  void cacheWeightOperands(ExecContext context = {});
  void invalidateWeightOperands() noexcept;
  bool weightOperandsCached() const noexcept { return w_in_cached_.defined(); }

 private:
  ExpertMlpConfig config_;
  Tensor w_in_, w_out_, grad_w_in_, grad_w_out_;
  // Saved by forward.
  std::vector<int64_t> counts_, offsets_;
  Tensor x_, pre_, h_;  // input rows and activation [R, F] in compute_dtype; pre-activation f32
  Tensor w_in_c_, w_out_c_;  // the weights as GEMM operands (the masters themselves for f32)
  // The operands kept by cacheWeightOperands (undefined when none are kept).
  Tensor w_in_cached_, w_out_cached_;
};

}  // namespace moecomm
