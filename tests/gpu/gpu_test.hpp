// A small test harness for the GPU tests. They must build on a GPU machine that has only the CUDA
// toolkit, CMake and Python (scripts/gpu-check.sh), where GoogleTest is absent, so they register
// cases here instead. Exit status: 0 all passed, 1 a case failed, 77 no usable GPU (ctest skip).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace moecomm::gputest {

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Case {
  std::string name;
  std::function<void()> body;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

struct Register {
  Register(const char* name, std::function<void()> body) {
    registry().push_back({name, std::move(body)});
  }
};

[[noreturn]] inline void fail(const char* file, int line, const std::string& what) {
  std::ostringstream out;
  out << file << ":" << line << ": " << what;
  throw Failure(out.str());
}

// Prints why and returns false when no GPU is usable: any error from the device count counts as
// none.
inline bool gpuUsable() {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices == 0) {
    std::printf("SKIP: no usable GPU (%s)\n",
                status != cudaSuccess ? cudaGetErrorString(status) : "no device");
    return false;
  }
  return true;
}

// 77 (skip) when no GPU is usable.
inline int runAll(int argc, char** argv) {
  if (!gpuUsable()) return 77;
  int devices = 0;
  cudaGetDeviceCount(&devices);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("GPU: %s (sm_%d%d), %d device(s)\n", prop.name, prop.major, prop.minor, devices);
  const char* filter = argc > 1 ? argv[1] : nullptr;
  int failed = 0;
  int ran = 0;
  for (const Case& c : registry()) {
    if (filter != nullptr && c.name.find(filter) == std::string::npos) continue;
    ++ran;
    try {
      c.body();
      const cudaError_t late = cudaDeviceSynchronize();
      if (late != cudaSuccess) fail(__FILE__, __LINE__, cudaGetErrorString(late));
      std::printf("[ PASS ] %s\n", c.name.c_str());
    } catch (const std::exception& e) {
      ++failed;
      std::printf("[ FAIL ] %s\n         %s\n", c.name.c_str(), e.what());
    }
    std::fflush(stdout);
  }
  std::printf("%d of %d GPU test cases passed\n", ran - failed, ran);
  return failed == 0 ? 0 : 1;
}

}  // namespace moecomm::gputest

#define GPU_TEST_CONCAT2(a, b) a##b
#define GPU_TEST_CONCAT(a, b) GPU_TEST_CONCAT2(a, b)
#define GPU_TEST(name)                                                                \
  static void name();                                                                 \
  static ::moecomm::gputest::Register GPU_TEST_CONCAT(register_, name)(#name, &name); \
  static void name()

// Fails the case with a message built from the streamed arguments.
#define GPU_CHECK(cond, ...)                                              \
  do {                                                                    \
    if (!(cond)) {                                                        \
      std::ostringstream gpu_check_out_;                                  \
      gpu_check_out_ << "check failed: " #cond " " << __VA_ARGS__;        \
      ::moecomm::gputest::fail(__FILE__, __LINE__, gpu_check_out_.str()); \
    }                                                                     \
  } while (0)

#define CUDA_OK(call)                                                                            \
  do {                                                                                           \
    const cudaError_t cuda_ok_status_ = (call);                                                  \
    if (cuda_ok_status_ != cudaSuccess) {                                                        \
      ::moecomm::gputest::fail(__FILE__, __LINE__,                                               \
                               std::string(#call " -> ") + cudaGetErrorString(cuda_ok_status_)); \
    }                                                                                            \
  } while (0)
