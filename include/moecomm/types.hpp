// Core value types: data types, devices, non-owning tensor views and an owning tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "moecomm/export.hpp"

namespace moecomm {

enum class DType : int32_t {
  kF32 = 0,
  kBF16 = 1,
  kF16 = 2,
  kFP8E4M3 = 3,  // OCP e4m3fn: max 448, no infinity; used with per-128-block f32 scales
  kI32 = 4,
  kI64 = 5,
};

MOECOMM_API size_t dtypeSize(DType dtype) noexcept;
MOECOMM_API const char* dtypeName(DType dtype) noexcept;

enum class DeviceKind : int32_t { kCpu = 0, kCuda = 1 };

struct Device {
  DeviceKind kind = DeviceKind::kCpu;
  int index = 0;  // the GPU's CUDA device index
  static Device cpu() { return {}; }
  static Device cuda(int index = 0) { return {DeviceKind::kCuda, index}; }
  bool isCuda() const noexcept { return kind == DeviceKind::kCuda; }
};

// Where an operation runs. CPU operations ignore the stream; with CUDA tensors the work is ordered
// on it (docs/cuda.md says which calls also wait for it). Every operation takes one as its last
// argument so that shape never changes.
struct ExecContext {
  void* stream = nullptr;  // a cudaStream_t; null is the default stream
};

inline constexpr int kMaxDims = 4;

// A view of memory someone else owns: data, dtype, device and shape, rows contiguous. A framework
// tensor maps onto it without a copy (data_ptr, dtype, sizes). Row-major, no strides.
struct MOECOMM_API TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  Device device{};
  int ndim = 0;
  int64_t shape[kMaxDims] = {0, 0, 0, 0};

  static TensorView vector(void* data, DType dtype, int64_t n, Device device = {});
  static TensorView matrix(void* data, DType dtype, int64_t rows, int64_t cols, Device device = {});

  int64_t numel() const noexcept;
  size_t bytes() const noexcept { return static_cast<size_t>(numel()) * dtypeSize(dtype); }
  int64_t dim(int i) const noexcept { return i < ndim ? shape[i] : 1; }
  std::string describe() const;  // "bf16[4096, 7168] cpu" for error messages

  template <typename T>
  T* as() const noexcept {
    return static_cast<T*>(data);
  }
};

// An owning tensor in host memory (64-byte aligned) or on a GPU. Results the library produces are
// Tensors; inputs are TensorViews. Copies share the storage.
// On a GPU, without a context: cudaMalloc, usable on any stream (long-lived tensors). With one:
// from the allocator in force, ordered on the context's stream (include/moecomm/allocator.hpp).
// zeros waits for its memset either way.
class MOECOMM_API Tensor {
 public:
  Tensor() = default;
  static Tensor empty(std::initializer_list<int64_t> shape, DType dtype, Device device = {});
  static Tensor empty(const std::vector<int64_t>& shape, DType dtype, Device device = {});
  static Tensor zeros(std::initializer_list<int64_t> shape, DType dtype, Device device = {});
  static Tensor empty(std::initializer_list<int64_t> shape, DType dtype, Device device,
                      ExecContext context);
  static Tensor empty(const std::vector<int64_t>& shape, DType dtype, Device device,
                      ExecContext context);
  static Tensor zeros(std::initializer_list<int64_t> shape, DType dtype, Device device,
                      ExecContext context);

  const TensorView& view() const noexcept { return view_; }
  operator const TensorView&() const noexcept { return view_; }  // NOLINT: views are the currency
  void* data() const noexcept { return view_.data; }
  template <typename T>
  T* as() const noexcept {
    return static_cast<T*>(view_.data);
  }
  DType dtype() const noexcept { return view_.dtype; }
  Device device() const noexcept { return view_.device; }
  int64_t dim(int i) const noexcept { return view_.dim(i); }
  int64_t numel() const noexcept { return view_.numel(); }
  size_t bytes() const noexcept { return view_.bytes(); }
  bool defined() const noexcept { return storage_ != nullptr || view_.ndim > 0; }

 private:
  static Tensor make(const std::vector<int64_t>& shape, DType dtype, Device device,
                     const ExecContext* context);
  static Tensor zeroed(Tensor t, void* stream);

  std::shared_ptr<std::byte> storage_;
  TensorView view_;
};

// A copy of `src` on `device` (host to GPU, GPU to host, or within either), ordered on the
// context's stream and finished when this returns.
MOECOMM_API Tensor copyTo(const TensorView& src, Device device, ExecContext context = {});

}  // namespace moecomm
