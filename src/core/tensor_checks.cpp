#include "src/core/tensor_checks.hpp"

#include <string>

namespace moecomm {

std::string deviceName(Device device) {
  return device.isCuda() ? text::format("cuda:{}", device.index) : std::string("cpu");
}

Status checkMatrix(const char* name, const TensorView& view, int64_t rows, int64_t cols,
                   std::initializer_list<DType> dtypes, bool any_device) {
  bool dtype_ok = false;
  std::string allowed;
  for (DType d : dtypes) {
    dtype_ok = dtype_ok || d == view.dtype;
    allowed += text::format("{}{}", allowed.empty() ? "" : " or ", dtypeName(d));
  }
  if (!dtype_ok) {
    return makeError(StatusCode::kInvalidArgument, "{} has dtype {}, expected {}", name,
                     dtypeName(view.dtype), allowed);
  }
  if (view.device.kind != DeviceKind::kCpu && !any_device) {
    return makeError(StatusCode::kInvalidArgument,
                     "{} is on a CUDA device, but this operation takes host tensors (docs/cuda.md "
                     "lists those that take CUDA tensors)",
                     name);
  }
  if (view.ndim != 2) {
    return makeError(StatusCode::kInvalidArgument, "{} must be 2-D, got {}", name, view.describe());
  }
  if (view.shape[0] < 0 || view.shape[1] < 0) {
    return makeError(StatusCode::kInvalidArgument, "{} has a negative dimension: {}", name,
                     view.describe());
  }
  if ((rows >= 0 && view.shape[0] != rows) || (cols >= 0 && view.shape[1] != cols)) {
    return makeError(StatusCode::kInvalidArgument, "{} is {}, expected shape [{}, {}]", name,
                     view.describe(), rows >= 0 ? std::to_string(rows) : "*",
                     cols >= 0 ? std::to_string(cols) : "*");
  }
  if (view.data == nullptr && view.numel() > 0) {
    return makeError(StatusCode::kInvalidArgument, "{} ({}) has null data", name, view.describe());
  }
  return Status::ok();
}

}  // namespace moecomm
