// The elementwise steps of the expert MLP and the MoE layer, on host tensors or CUDA tensors
// alike: the operands' device picks the CPU kernel or the CUDA kernel (ordered on the context's
// stream, no host wait). Operands must share one device; callers check that first.
#pragma once

#include "moecomm/experts.hpp"
#include "moecomm/types.hpp"
#include "src/core/status.hpp"

namespace moecomm::ops {

// h [R, F] from pre [R, 2F] (SwiGLU) or [R, F] (GELU), f32.
Status activationForward(Activation activation, const TensorView& pre, const TensorView& h,
                         ExecContext context);
// dpre (shaped like pre) from dh [R, F] and the forward's pre, f32.
Status activationBackward(Activation activation, const TensorView& pre, const TensorView& dh,
                          const TensorView& dpre, ExecContext context);

// dst = src converted elementwise (f32 and bf16 either way; equal numel).
Status convert(const TensorView& src, const TensorView& dst, ExecContext context);

// y += x, f32, equal numel.
Status addInto(const TensorView& y, const TensorView& x, ExecContext context);

// Every byte of t set to zero.
Status zero(const TensorView& t, ExecContext context);

// A tensor of src's shape and dtype (or `dtype`) on `device`, holding src's values; the copy is
// ordered on the context's stream and does not wait for it.
Status copyAs(const TensorView& src, DType dtype, Device device, ExecContext context, Tensor* out);

// Whether two devices are the same place (both host, or the same GPU).
inline bool sameDevice(Device a, Device b) {
  return a.kind == b.kind && (!a.isCuda() || a.index == b.index);
}

// `what` must be on `want`; the message names both devices and `setting`, the option that says
// where the object lives (e.g. "MoeLayerConfig.device").
Status checkOnDevice(const char* what, const TensorView& view, Device want, const char* setting);

// For ExpertMlp and MoeLayer, the API edge (they throw moecomm::Error):
// copyAs on src's own device.
Tensor copyOnDevice(const TensorView& src, DType dtype, ExecContext context);
// src as `dtype`: itself when it already is, else a converted copy kept in `scratch`.
const TensorView& asDtype(const TensorView& src, DType dtype, Tensor& scratch, ExecContext context);
inline const TensorView& asF32(const TensorView& src, Tensor& scratch, ExecContext context) {
  return asDtype(src, DType::kF32, scratch, context);
}

}  // namespace moecomm::ops
