// Host and GPU tensors for the tests of the public API: random fills, copies both ways, poisoned
// outputs, comparisons, and ranks as threads sharing a GPU.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <initializer_list>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "moecomm/error.hpp"
#include "moecomm/types.hpp"
#include "src/core/numeric.hpp"
#include "tests/gpu/gpu_test.hpp"

namespace moecomm::gputest {

// One engine per thread: ranks are threads that draw their inputs at the same time. Each thread
// takes the next seed, so ranks draw different data.
inline std::mt19937& rng() {
  static std::atomic<unsigned> next_seed{97};
  thread_local std::mt19937 engine(next_seed++);
  return engine;
}

inline Tensor randomHost(std::initializer_list<int64_t> shape, DType dtype, float lo = -1.0f,
                         float hi = 1.0f) {
  Tensor t = Tensor::empty(shape, dtype);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = dist(rng());
    if (dtype == DType::kBF16) {
      t.as<uint16_t>()[i] = numeric::floatToBf16(v);
    } else {
      t.as<float>()[i] = v;
    }
  }
  return t;
}

inline Tensor onGpu(const Tensor& host, cudaStream_t stream = nullptr) {
  return copyTo(host.view(), Device::cuda(0), ExecContext{stream});
}

inline Tensor onHost(const TensorView& view) {
  return copyTo(view, Device::cpu());
}

// A GPU tensor of `shape` with every byte 0x7f.
inline Tensor poisoned(std::initializer_list<int64_t> shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype, Device::cuda(0));
  CUDA_OK(cudaMemset(t.data(), 0x7f, t.bytes()));
  return t;
}

inline bool sameBytes(const TensorView& a, const TensorView& b) {
  return a.bytes() == b.bytes() && (a.bytes() == 0 || std::memcmp(a.data, b.data, a.bytes()) == 0);
}

// Runs `body(rank)` on `ranks` threads and rethrows the first failure. With spread_gpus, rank r
// runs on GPU r (NCCL's one GPU per rank); otherwise every rank shares GPU 0.
inline void onThreads(int ranks, const std::function<void(int)>& body, bool spread_gpus = false) {
  std::vector<std::thread> threads;
  std::mutex mutex;
  std::exception_ptr failure;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        CUDA_OK(cudaSetDevice(spread_gpus ? r : 0));
        body(r);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!failure) failure = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
}

// Runs body(stream) on a new stream and destroys the stream after everything the body made has
// gone: a stream-ordered allocator gives memory back on the stream it was taken on. (A failing
// check leaves the stream behind, not a tensor.)
inline void onStream(const std::function<void(cudaStream_t)>& body,
                     unsigned flags = cudaStreamDefault) {
  cudaStream_t stream = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, flags));
  body(stream);
  CUDA_OK(cudaStreamDestroy(stream));
}

inline int gpuCount() {
  int count = 0;
  CUDA_OK(cudaGetDeviceCount(&count));
  return count;
}

inline bool closeFloats(const TensorView& want, const TensorView& got, float tol) {
  if (want.numel() != got.numel()) return false;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const float a = want.as<const float>()[i];
    const float b = got.as<const float>()[i];
    if (std::fabs(a - b) > tol * (1.0f + std::fabs(a))) return false;
  }
  return true;
}

// Whether `call` throws moecomm::Error with `code` and a message holding `text`.
inline bool throwsWith(const std::function<void()>& call, StatusCode code,
                       const std::string& text) {
  try {
    call();
  } catch (const Error& e) {
    return e.code() == code && std::string(e.what()).find(text) != std::string::npos;
  }
  return false;
}

}  // namespace moecomm::gputest
