// A whole MoE layer on one rank of a group: router, dispatch, the local experts' MLPs, combine,
// and an optional shared expert, forward and backward. Every rank holds the same router weight
// and its own slice of the experts (expert e lives on rank e / (E / ranks)).
#pragma once

#include <cstdint>
#include <memory>

#include "moecomm/dispatch.hpp"
#include "moecomm/experts.hpp"
#include "moecomm/export.hpp"
#include "moecomm/group.hpp"
#include "moecomm/router.hpp"

namespace moecomm {

struct MoeLayerConfig {
  int ffn =
      0;  // F of each routed expert; hidden, experts, top-k and wire dtype come from the group
  Activation activation = Activation::kSwiGLU;
  int shared_ffn = 0;    // > 0: a shared expert of this width runs on every token (DeepSeek)
  RouterOptions router;  // router.topk must equal the group's topk
  RouterLossOptions losses;
  DispatchOptions dispatch;
  Device device{};  // where parameters, gradients and activations live; inputs must be there too
  // The routed and shared experts' GEMM operands (ExpertMlpConfig::compute_dtype): f32, or bf16
  // with f32 accumulation. The router GEMM stays f32: top-k choices are sensitive to rounding.
  DType compute_dtype = DType::kF32;
};

// Where one forward or backward spent its time, in milliseconds (wall clock on this rank; waits
// for slower ranks land in the communication phases). On a GPU these are host times: a phase
// that only enqueues work looks short and the next wait absorbs it; time the GPU with events.
struct MoePhaseTimes {
  double route_ms = 0;     // router GEMM, gate, losses (and their backward)
  double dispatch_ms = 0;  // dispatch (backward: dispatchBackward)
  double experts_ms = 0;   // grouped expert MLPs
  double combine_ms = 0;   // combine (backward: combineBackward)
  double shared_ms = 0;    // the shared expert
};

struct MoeOutput {
  Tensor out;           // [T, H] f32
  LoadStats stats;      // this rank's routing
  RouterLosses losses;  // with the group's global expert load (a collective) when aux loss is on
  MoePhaseTimes times;  // where this forward spent its time
};

class MOECOMM_API MoeLayer {
 public:
  // Sets BLAS threads to this machine's cores divided by the ranks on this host, unless
  // MOECOMM_GEMM_THREADS says otherwise.
  MoeLayer(Group& group, const MoeLayerConfig& config);
  ~MoeLayer();
  MoeLayer(MoeLayer&&) noexcept;
  MoeLayer& operator=(MoeLayer&&) noexcept;

  // Parameters and gradients, f32. routerWeight [H, E]; expertBias [E] (selection only, not
  // trained by backward: see updateExpertBias); experts() holds this rank's experts.
  const Tensor& routerWeight() const noexcept;
  const Tensor& gradRouterWeight() const noexcept;
  const Tensor& expertBias() const noexcept;
  ExpertMlp& experts() noexcept;
  ExpertMlp* sharedExpert() noexcept;  // nullptr without one
  // Deterministic weights: each global expert's draw depends only on (seed, expert id), so any
  // rank count gives the same model. Uniform in +-1/sqrt(fan_in).
  void initWeights(uint64_t seed, ExecContext context = {});
  void zeroGrad(ExecContext context = {});

  // Collective. x [T, H] f32 or bf16 on the config's device; the router and shared expert see x
  // in f32, the routed experts see it in the group's wire dtype. On a GPU the work is ordered on
  // the context's stream; the router, dispatch and the balancing losses wait for it as
  // docs/cuda.md says.
  MoeOutput forward(const TensorView& x, ExecContext context = {});
  // Collective. grad_out [T, H] f32 or bf16 of the last forward -> grad_x [T, H] f32. Adds into
  // every parameter gradient: router weight, local experts, shared expert.
  Tensor backward(const TensorView& grad_out, ExecContext context = {});
  const MoePhaseTimes& lastBackwardTimes() const noexcept;

  struct State;

 private:
  std::unique_ptr<State> state_;
};

}  // namespace moecomm
