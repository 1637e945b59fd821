// The device allocator hook: which allocator serves a call's GPU tensors, with which bytes, GPU
// and stream, released exactly once by the last owner and to the allocator that made it; failures
// named; the C ABI's function pointers. The application allocators here hand out host memory
// (nothing reads it), so these run in every build; on a machine with a usable GPU they skip, and
// tests/gpu runs real GPU memory through the same hook.
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>

#include "common/gpu_usable.hpp"
#include "common/ledger_allocator.hpp"
#include "moecomm/moecomm.h"
#include "moecomm/moecomm.hpp"

namespace moecomm {
namespace {

using testing::gpuUsable;
using testing::LedgerAllocator;

// Installs an allocator for one test and restores the default after it.
class DeviceAllocatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (gpuUsable()) GTEST_SKIP() << "a GPU is usable here; tests/gpu covers real GPU memory";
  }
  void TearDown() override { setDeviceAllocator(nullptr); }
};

void* streamNamed(uintptr_t n) {
  return reinterpret_cast<void*>(n);  // a token: nothing is ever run on it here
}

TEST(DeviceAllocatorChoice, TheEnvironmentPicksTheBuiltInOne) {
  const char* saved = std::getenv("MOECOMM_CUDA_ALLOCATOR");
  const std::string before = saved != nullptr ? saved : "";
  setenv("MOECOMM_CUDA_ALLOCATOR", "stream", 1);
  setDeviceAllocator(nullptr);
  EXPECT_EQ(currentDeviceAllocator(), streamOrderedDeviceAllocator());
  EXPECT_STREQ(currentDeviceAllocator()->name(), "stream-ordered pool");
  setenv("MOECOMM_CUDA_ALLOCATOR", "sync", 1);
  setDeviceAllocator(nullptr);
  EXPECT_EQ(currentDeviceAllocator(), synchronousDeviceAllocator());
  EXPECT_STREQ(currentDeviceAllocator()->name(), "cudaMalloc");
  setenv("MOECOMM_CUDA_ALLOCATOR", "pytorch", 1);  // unknown: warned about, and the safe one
  setDeviceAllocator(nullptr);
  EXPECT_EQ(currentDeviceAllocator(), synchronousDeviceAllocator());
  unsetenv("MOECOMM_CUDA_ALLOCATOR");
  setDeviceAllocator(nullptr);
  EXPECT_EQ(currentDeviceAllocator(), synchronousDeviceAllocator()) << "the default is cudaMalloc";
  if (saved != nullptr) setenv("MOECOMM_CUDA_ALLOCATOR", before.c_str(), 1);
  setDeviceAllocator(nullptr);
}

TEST_F(DeviceAllocatorTest, CallTensorsComeFromItWithTheirGpuAndStream) {
  auto ledger = testing::hostLedgerAllocator();
  setDeviceAllocator(ledger);
  EXPECT_EQ(currentDeviceAllocator(), ledger);
  {
    const Tensor t =
        Tensor::empty({3, 5}, DType::kBF16, Device::cuda(1), ExecContext{streamNamed(7)});
    ASSERT_EQ(ledger->counts().live, 1u);
    const LedgerAllocator::Block b = ledger->block(t.data());
    EXPECT_EQ(b.bytes, 30u);
    EXPECT_EQ(b.device, 1);
    EXPECT_EQ(b.stream, streamNamed(7));
    EXPECT_TRUE(t.device().isCuda());
    EXPECT_EQ(t.device().index, 1);
    Tensor copy = t;  // copies share the storage: one release, by the last owner
    { const Tensor dropped = std::move(copy); }
    EXPECT_EQ(ledger->counts().live, 1u) << "released while a copy still owns it";
  }
  EXPECT_EQ(ledger->counts().live, 0u);
  // A zero-size tensor still has an address the allocator owns.
  {
    const Tensor empty =
        Tensor::empty(std::vector<int64_t>{0, 8}, DType::kF32, Device::cuda(0), {});
  }
  EXPECT_EQ(ledger->counts().allocations, 2);
  EXPECT_EQ(ledger->counts().live, 0u);
  // Host tensors never reach it, with or without a context.
  {
    const Tensor host = Tensor::empty({4}, DType::kF32, Device::cpu(), ExecContext{streamNamed(1)});
  }
  EXPECT_EQ(ledger->counts().allocations, 2);
  EXPECT_EQ(ledger->counts().mismatches, 0);
}

TEST_F(DeviceAllocatorTest, TensorsWithoutAContextNeverReachIt) {
  auto ledger = testing::hostLedgerAllocator();
  setDeviceAllocator(ledger);
  // Long-lived tensors (parameters) come from cudaMalloc, which needs a GPU this machine lacks.
  EXPECT_THROW((void)Tensor::empty({4}, DType::kF32, Device::cuda(0)), Error);
  EXPECT_EQ(ledger->counts().allocations, 0);
}

TEST_F(DeviceAllocatorTest, ATensorGoesBackToTheAllocatorThatMadeIt) {
  auto first = testing::hostLedgerAllocator();
  auto second = testing::hostLedgerAllocator();
  setDeviceAllocator(first);
  Tensor a = Tensor::empty({16}, DType::kF32, Device::cuda(0), ExecContext{streamNamed(3)});
  setDeviceAllocator(second);
  Tensor b = Tensor::empty({16}, DType::kF32, Device::cuda(0), ExecContext{streamNamed(4)});
  setDeviceAllocator(nullptr);
  a = Tensor();
  EXPECT_EQ(first->counts().live, 0u);
  EXPECT_EQ(second->counts().live, 1u);
  b = Tensor();
  EXPECT_EQ(second->counts().live, 0u);
  EXPECT_EQ(first->counts().mismatches, 0);
  EXPECT_EQ(second->counts().mismatches, 0);
  // The tensor keeps its allocator alive after the application let go of it.
  auto third = testing::hostLedgerAllocator();
  const std::weak_ptr<LedgerAllocator> watch = third;
  setDeviceAllocator(third);
  Tensor c = Tensor::empty({4}, DType::kF32, Device::cuda(0), ExecContext{});
  setDeviceAllocator(nullptr);
  third.reset();
  EXPECT_FALSE(watch.expired()) << "the allocator went while a tensor of it lived";
  c = Tensor();
  EXPECT_TRUE(watch.expired()) << "the last tensor must let its allocator go";
}

class FailingAllocator final : public DeviceAllocator {
 public:
  explicit FailingAllocator(bool throws) : throws_(throws) {}
  void* allocate(size_t, int, void*) override {
    if (throws_) throw std::runtime_error("CUDA out of memory (from the test)");
    return nullptr;
  }
  void release(void*, size_t, int, void*) noexcept override { ++released; }
  const char* name() const noexcept override { return "failing"; }
  int released = 0;

 private:
  bool throws_;
};

TEST_F(DeviceAllocatorTest, AFailureNamesTheSizeTheGpuTheAllocatorAndWhy) {
  for (bool throws : {false, true}) {
    auto failing = std::make_shared<FailingAllocator>(throws);
    setDeviceAllocator(failing);
    try {
      (void)Tensor::empty({3, 5}, DType::kF32, Device::cuda(2), ExecContext{});
      FAIL() << "a failed allocation must throw";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), StatusCode::kSystemError);
      const std::string what = e.what();
      EXPECT_NE(what.find("allocating 60 bytes on GPU 2 with the 'failing' allocator failed"),
                std::string::npos)
          << what;
      EXPECT_NE(what.find(throws ? "CUDA out of memory (from the test)" : "returned null"),
                std::string::npos)
          << what;
    }
    EXPECT_EQ(failing->released, 0);
  }
}

TEST_F(DeviceAllocatorTest, ZerosThatCannotRunGiveTheirMemoryBack) {
  auto ledger = testing::hostLedgerAllocator();
  setDeviceAllocator(ledger);
  // The memset needs a GPU: the call fails, and the block it took goes back.
  EXPECT_THROW((void)Tensor::zeros({8, 8}, DType::kF32, Device::cuda(0), ExecContext{}), Error);
  EXPECT_EQ(ledger->counts().allocations, 1);
  EXPECT_EQ(ledger->counts().live, 0u);
}

// ------------------------------------------------------------------------------ the C ABI

struct CLedger {
  int allocations = 0;
  int releases = 0;
  size_t last_bytes = 0;
  int last_device = -1;
  void* last_stream = nullptr;
};

void* cAllocate(size_t bytes, int device, void* stream, void* context) {
  auto* l = static_cast<CLedger*>(context);
  ++l->allocations;
  l->last_bytes = bytes;
  l->last_device = device;
  l->last_stream = stream;
  return std::malloc(bytes);
}

void cRelease(void* ptr, size_t bytes, int device, void* stream, void* context) {
  auto* l = static_cast<CLedger*>(context);
  if (bytes == l->last_bytes && device == l->last_device && stream == l->last_stream) ++l->releases;
  std::free(ptr);
}

TEST_F(DeviceAllocatorTest, TheCAbiRefusesMalformedAllocatorsAndCallsAGoodOne) {
  moecommDeviceAllocator_t bad = MOECOMM_DEVICE_ALLOCATOR_INIT;
  bad.allocate = &cAllocate;
  bad.release = &cRelease;
  bad.magic = 0;
  EXPECT_EQ(moecommSetDeviceAllocator(&bad), moecommInvalidArgument);
  EXPECT_NE(std::string(moecommGetLastError(nullptr)).find("MOECOMM_DEVICE_ALLOCATOR_INIT"),
            std::string::npos);
  moecommDeviceAllocator_t half = MOECOMM_DEVICE_ALLOCATOR_INIT;
  half.allocate = &cAllocate;
  EXPECT_EQ(moecommSetDeviceAllocator(&half), moecommInvalidArgument);
  EXPECT_NE(std::string(moecommGetLastError(nullptr)).find("must both be set"), std::string::npos);
  EXPECT_EQ(currentDeviceAllocator(), synchronousDeviceAllocator()) << "a refused one is not set";

  CLedger ledger;
  moecommDeviceAllocator_t good = MOECOMM_DEVICE_ALLOCATOR_INIT;
  good.allocate = &cAllocate;
  good.release = &cRelease;
  good.context = &ledger;
  good.name = "framework";
  ASSERT_EQ(moecommSetDeviceAllocator(&good), moecommSuccess);
  EXPECT_STREQ(currentDeviceAllocator()->name(), "framework");
  {
    const Tensor t =
        Tensor::empty({2, 3}, DType::kI64, Device::cuda(0), ExecContext{streamNamed(9)});
    EXPECT_EQ(ledger.allocations, 1);
    EXPECT_EQ(ledger.last_bytes, 48u);
    EXPECT_EQ(ledger.last_stream, streamNamed(9));
  }
  EXPECT_EQ(ledger.releases, 1);
  ASSERT_EQ(moecommSetDeviceAllocator(nullptr), moecommSuccess);
  EXPECT_EQ(currentDeviceAllocator(), synchronousDeviceAllocator());
}

}  // namespace
}  // namespace moecomm
