// Device memory for the GPU tests and benchmarks: owned, poisoned on request, copied whole.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

namespace moecomm::gputest {

inline void cudaOrThrow(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
  }
}

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) : count_(count) {
    cudaOrThrow(cudaMalloc(reinterpret_cast<void**>(&data_), sizeof(T) * (count > 0 ? count : 1)),
                "cudaMalloc");
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() {
    if (data_ != nullptr) cudaFree(data_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept : data_(other.data_), count_(other.count_) {
    other.data_ = nullptr;
    other.count_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      if (data_ != nullptr) cudaFree(data_);
      data_ = other.data_;
      count_ = other.count_;
      other.data_ = nullptr;
      other.count_ = 0;
    }
    return *this;
  }

  T* get() const { return data_; }
  size_t size() const { return count_; }
  void upload(const std::vector<T>& host) {
    cudaOrThrow(cudaMemcpy(data_, host.data(), sizeof(T) * host.size(), cudaMemcpyHostToDevice),
                "upload");
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    cudaOrThrow(cudaMemcpy(host.data(), data_, sizeof(T) * count_, cudaMemcpyDeviceToHost),
                "download");
    return host;
  }
  // Every byte set to `byte`, so that elements a kernel should have written and did not show.
  void poison(int byte = 0x7f) {
    cudaOrThrow(cudaMemset(data_, byte, sizeof(T) * (count_ > 0 ? count_ : 1)), "poison");
  }

 private:
  T* data_ = nullptr;
  size_t count_ = 0;
};

}  // namespace moecomm::gputest
