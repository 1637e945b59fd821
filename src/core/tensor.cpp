#include "src/core/device.hpp"
#include "src/core/format.hpp"

#include <cstdlib>
#include <cstring>
#include <new>

#include "moecomm/types.hpp"
#include "src/core/host_cache.hpp"
#include "src/core/tensor_checks.hpp"

namespace moecomm {

size_t dtypeSize(DType dtype) noexcept {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
    case DType::kF16:
      return 2;
    case DType::kFP8E4M3:
      return 1;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
  }
  return 0;
}

const char* dtypeName(DType dtype) noexcept {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
    case DType::kFP8E4M3:
      return "fp8e4m3";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
  }
  return "unknown";
}

TensorView TensorView::vector(void* data, DType dtype, int64_t n, Device device) {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.device = device;
  v.ndim = 1;
  v.shape[0] = n;
  return v;
}

TensorView TensorView::matrix(void* data, DType dtype, int64_t rows, int64_t cols, Device device) {
  TensorView v = vector(data, dtype, rows, device);
  v.ndim = 2;
  v.shape[1] = cols;
  return v;
}

int64_t TensorView::numel() const noexcept {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

std::string TensorView::describe() const {
  std::string dims;
  for (int i = 0; i < ndim; ++i) dims += text::format("{}{}", i ? ", " : "", shape[i]);
  return text::format("{}[{}] {}", dtypeName(dtype), dims, deviceName(device));
}

Tensor Tensor::empty(std::initializer_list<int64_t> shape, DType dtype, Device device) {
  return make(std::vector<int64_t>(shape), dtype, device, nullptr);
}

Tensor Tensor::empty(const std::vector<int64_t>& shape, DType dtype, Device device) {
  return make(shape, dtype, device, nullptr);
}

Tensor Tensor::empty(std::initializer_list<int64_t> shape, DType dtype, Device device,
                     ExecContext context) {
  return make(std::vector<int64_t>(shape), dtype, device, &context);
}

Tensor Tensor::empty(const std::vector<int64_t>& shape, DType dtype, Device device,
                     ExecContext context) {
  return make(shape, dtype, device, &context);
}

Tensor Tensor::make(const std::vector<int64_t>& shape, DType dtype, Device device,
                    const ExecContext* context) {
  Tensor t;
  t.view_.dtype = dtype;
  t.view_.device = device;
  t.view_.ndim = static_cast<int>(shape.size());
  if (t.view_.ndim > kMaxDims) throw std::invalid_argument("moecomm::Tensor: at most 4 dims");
  int i = 0;
  for (int64_t d : shape) {
    if (d < 0) throw std::invalid_argument(text::format("moecomm::Tensor: negative dim {}", d));
    t.view_.shape[i++] = d;
  }
  if (device.isCuda()) {
    throwIfError(context != nullptr ? device::allocateFor(device.index, t.view_.bytes(),
                                                          context->stream, &t.storage_)
                                    : device::allocate(device.index, t.view_.bytes(), &t.storage_));
    t.view_.data = t.storage_.get();
    return t;
  }
  size_t capacity = 0;
  void* memory = hostAlloc(t.view_.bytes(), &capacity);
  t.storage_ = std::shared_ptr<std::byte>(static_cast<std::byte*>(memory),
                                          [capacity](std::byte* p) { hostFree(p, capacity); });
  t.view_.data = memory;
  return t;
}

Tensor Tensor::zeros(std::initializer_list<int64_t> shape, DType dtype, Device device) {
  return zeroed(empty(shape, dtype, device), nullptr);
}

Tensor Tensor::zeros(std::initializer_list<int64_t> shape, DType dtype, Device device,
                     ExecContext context) {
  return zeroed(empty(shape, dtype, device, context), context.stream);
}

Tensor Tensor::zeroed(Tensor t, void* stream) {
  if (t.device().isCuda()) {
    throwIfError(device::memsetAsync(t.data(), 0, t.bytes(), stream));
    throwIfError(device::synchronize(stream));
  } else {
    std::memset(t.data(), 0, t.bytes());
  }
  return t;
}

Tensor copyTo(const TensorView& src, Device device, ExecContext context) {
  std::vector<int64_t> shape(src.shape, src.shape + src.ndim);
  Tensor out = Tensor::empty(shape, src.dtype, device, context);
  if (!src.device.isCuda() && !device.isCuda()) {
    if (src.bytes() > 0) std::memcpy(out.data(), src.data, src.bytes());
    return out;
  }
  const device::Direction direction = !src.device.isCuda() ? device::Direction::kToDevice
                                      : !device.isCuda()   ? device::Direction::kToHost
                                                           : device::Direction::kDeviceToDevice;
  throwIfError(device::copyAsync(out.data(), src.data, src.bytes(), direction, context.stream));
  throwIfError(device::synchronize(context.stream));
  return out;
}

}  // namespace moecomm
