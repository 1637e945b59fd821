#include "src/experts/tensor_ops.hpp"

#include <cstring>
#include <vector>

#include "kernels/cpu/activations.hpp"
#include "kernels/cpu/convert.hpp"
#include "src/core/device.hpp"
#include "src/core/tensor_checks.hpp"

#if defined(MOECOMM_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "kernels/cuda/elementwise.hpp"
#endif

namespace moecomm::ops {

namespace {

bool isRowType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16;
}

#if defined(MOECOMM_HAVE_CUDA)

cudaStream_t streamOf(ExecContext context) {
  return static_cast<cudaStream_t>(context.stream);
}

cuda::RowType rowType(DType dtype) {
  return dtype == DType::kBF16 ? cuda::RowType::kBF16 : cuda::RowType::kF32;
}
#endif

// Whether the CUDA path is usable for this operand; fails when the build has no CUDA.
Status onGpu(const TensorView& t, bool* gpu) {
  *gpu = t.device.isCuda();
  if (!*gpu) return Status::ok();
  MOECOMM_RETURN_IF_ERROR(device::requireDevice(t.device.index));
  return device::setDevice(t.device.index);
}

}  // namespace

Status activationForward(Activation activation, const TensorView& pre, const TensorView& h,
                         ExecContext context) {
  const int64_t rows = h.dim(0), ffn = h.dim(1);
  bool gpu = false;
  MOECOMM_RETURN_IF_ERROR(onGpu(h, &gpu));
  if (!gpu) {
    if (activation == Activation::kSwiGLU) {
      cpu::swigluForward(pre.as<float>(), h.as<float>(), rows, ffn);
    } else {
      cpu::geluForward(pre.as<float>(), h.as<float>(), rows * ffn);
    }
    return Status::ok();
  }
#if defined(MOECOMM_HAVE_CUDA)
  if (activation == Activation::kSwiGLU) {
    return device::cudaStatus(
        cuda::swigluForward(pre.as<float>(), h.as<float>(), rows, ffn, streamOf(context)),
        "the SwiGLU kernel");
  }
  return device::cudaStatus(
      cuda::geluForward(pre.as<float>(), h.as<float>(), rows * ffn, streamOf(context)),
      "the GELU kernel");
#else
  (void)context;
  return Status::ok();
#endif
}

Status activationBackward(Activation activation, const TensorView& pre, const TensorView& dh,
                          const TensorView& dpre, ExecContext context) {
  const int64_t rows = dh.dim(0), ffn = dh.dim(1);
  bool gpu = false;
  MOECOMM_RETURN_IF_ERROR(onGpu(dh, &gpu));
  if (!gpu) {
    if (activation == Activation::kSwiGLU) {
      cpu::swigluBackward(pre.as<float>(), dh.as<float>(), dpre.as<float>(), rows, ffn);
    } else {
      cpu::geluBackward(pre.as<float>(), dh.as<float>(), dpre.as<float>(), rows * ffn);
    }
    return Status::ok();
  }
#if defined(MOECOMM_HAVE_CUDA)
  if (activation == Activation::kSwiGLU) {
    return device::cudaStatus(cuda::swigluBackward(pre.as<float>(), dh.as<float>(),
                                                   dpre.as<float>(), rows, ffn, streamOf(context)),
                              "the SwiGLU backward kernel");
  }
  return device::cudaStatus(cuda::geluBackward(pre.as<float>(), dh.as<float>(), dpre.as<float>(),
                                               rows * ffn, streamOf(context)),
                            "the GELU backward kernel");
#else
  (void)context;
  return Status::ok();
#endif
}

Status convert(const TensorView& src, const TensorView& dst, ExecContext context) {
  if (!isRowType(src.dtype) || !isRowType(dst.dtype) || src.numel() != dst.numel() ||
      !sameDevice(src.device, dst.device)) {
    return makeError(StatusCode::kInvalidArgument,
                     "cannot convert {} into {}: both must be f32 or bf16 with the same size, on "
                     "the same device",
                     src.describe(), dst.describe());
  }
  bool gpu = false;
  MOECOMM_RETURN_IF_ERROR(onGpu(dst, &gpu));
  const int64_t n = src.numel();
  if (!gpu) {
    if (n > 0) cpu::convertArray(src.data, src.dtype, dst.data, dst.dtype, n);
    return Status::ok();
  }
  if (src.dtype == dst.dtype) {
    return device::copyAsync(dst.data, src.data, src.bytes(), device::Direction::kDeviceToDevice,
                             context.stream);
  }
#if defined(MOECOMM_HAVE_CUDA)
  if (dst.dtype == DType::kF32) {
    return device::cudaStatus(
        cuda::toF32(src.data, rowType(src.dtype), dst.as<float>(), n, streamOf(context)),
        "the conversion kernel");
  }
  return device::cudaStatus(
      cuda::fromF32(src.as<float>(), dst.data, rowType(dst.dtype), n, streamOf(context)),
      "the conversion kernel");
#else
  return Status::ok();
#endif
}

Status addInto(const TensorView& y, const TensorView& x, ExecContext context) {
  if (y.dtype != DType::kF32 || x.dtype != DType::kF32 || y.numel() != x.numel() ||
      !sameDevice(y.device, x.device)) {
    return makeError(StatusCode::kInvalidArgument,
                     "cannot add {} into {}: both must be f32 of the same size, on the same device",
                     x.describe(), y.describe());
  }
  bool gpu = false;
  MOECOMM_RETURN_IF_ERROR(onGpu(y, &gpu));
  const int64_t n = y.numel();
  if (!gpu) {
    float* out = y.as<float>();
    const float* add = x.as<float>();
    for (int64_t i = 0; i < n; ++i) out[i] += add[i];
    return Status::ok();
  }
#if defined(MOECOMM_HAVE_CUDA)
  return device::cudaStatus(cuda::addInto(y.as<float>(), x.as<float>(), n, streamOf(context)),
                            "the add kernel");
#else
  (void)context;
  return Status::ok();
#endif
}

Status zero(const TensorView& t, ExecContext context) {
  if (!t.device.isCuda()) {
    if (t.bytes() > 0) std::memset(t.data, 0, t.bytes());
    return Status::ok();
  }
  MOECOMM_RETURN_IF_ERROR(device::setDevice(t.device.index));
  return device::memsetAsync(t.data, 0, t.bytes(), context.stream);
}

Status copyAs(const TensorView& src, DType dtype, Device device, ExecContext context, Tensor* out) {
  if (!sameDevice(src.device, device)) {
    return makeError(StatusCode::kInvalidArgument, "{} is not on the device asked for",
                     src.describe());
  }
  try {
    *out = Tensor::empty(std::vector<int64_t>(src.shape, src.shape + src.ndim), dtype, device,
                         context);
  } catch (const Error& e) {
    return Status(e.code(), e.what());
  }
  return convert(src, out->view(), context);  // a plain copy when the dtypes match
}

Status checkOnDevice(const char* what, const TensorView& view, Device want, const char* setting) {
  if (sameDevice(view.device, want)) return Status::ok();
  return makeError(StatusCode::kInvalidArgument, "{} {} is not on {}: pass it there, or set {}",
                   what, view.describe(), deviceName(want), setting);
}

Tensor copyOnDevice(const TensorView& src, DType dtype, ExecContext context) {
  Tensor out;
  throwIfError(copyAs(src, dtype, src.device, context, &out));
  return out;
}

const TensorView& asDtype(const TensorView& src, DType dtype, Tensor& scratch,
                          ExecContext context) {
  if (src.dtype == dtype) return src;
  scratch = copyOnDevice(src, dtype, context);
  return scratch.view();
}

}  // namespace moecomm::ops
