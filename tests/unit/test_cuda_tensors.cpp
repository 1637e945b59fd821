// CUDA tensors where no GPU is usable (CI) or the library has no CUDA: every entry point fails
// with a clear message instead of touching the pointer, and a collective call fails on every
// rank (the rank holding the CUDA tensor with its own error, its peers with kRemoteError naming
// it) instead of leaving the peers waiting. Skipped where a GPU is usable: tests/gpu covers that.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/gpu_usable.hpp"
#include "common/ledger_allocator.hpp"
#include "common/rank_runner.hpp"
#include "moecomm/moecomm.hpp"

namespace moecomm {
namespace {

using testing::gpuUsable;
using testing::runThreads;

// A view that claims to be on GPU 0 over host memory: with no usable GPU it must never be read.
TensorView fakeCuda(std::vector<float>& host, int64_t rows, int64_t cols) {
  TensorView v = TensorView::matrix(host.data(), DType::kF32, rows, cols);
  v.device = Device::cuda(0);
  return v;
}

TEST(CudaTensors, AllocationWithoutAGpuSaysWhy) {
  if (gpuUsable()) GTEST_SKIP() << "a GPU is usable here; tests/gpu covers CUDA tensors";
  try {
    (void)Tensor::zeros({4, 4}, DType::kBF16, Device::cuda(0));
    FAIL() << "allocating on a missing GPU must throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidUsage);
    // Built with CUDA: "no GPU is usable here"; without: "built without CUDA".
    EXPECT_NE(std::string(e.what()).find("a CUDA tensor was passed"), std::string::npos)
        << e.what();
  }
}

// The host halves of the device API work everywhere: shapes from a vector, host copies, and a
// CPU dispatch's handle saying it did not run GPU-native.
TEST(CudaTensors, HostCopiesAndHandlesWithoutAGpu) {
  const Tensor a = Tensor::empty(std::vector<int64_t>{3, 5}, DType::kF32);
  ASSERT_EQ(a.dim(0), 3);
  ASSERT_EQ(a.dim(1), 5);
  EXPECT_FALSE(a.device().isCuda());
  for (int64_t i = 0; i < a.numel(); ++i) a.as<float>()[i] = static_cast<float>(i) * 0.5f;
  const Tensor b = copyTo(a.view(), Device::cpu());
  ASSERT_NE(b.data(), a.data()) << "copyTo must copy, not alias";
  for (int64_t i = 0; i < a.numel(); ++i) EXPECT_EQ(b.as<float>()[i], a.as<float>()[i]);
  EXPECT_NE(a.view().describe().find("cpu"), std::string::npos);
  TensorView on_gpu = a.view();
  on_gpu.device = Device::cuda(1);
  EXPECT_NE(on_gpu.describe().find("cuda:1"), std::string::npos) << on_gpu.describe();

  runThreads(2, [](LocalWorld& world, int rank) {
    GroupConfig config;
    config.num_experts = 4;
    config.hidden = 8;
    config.dtype = DType::kF32;
    config.topk = 1;
    Group group = Group::create(world, rank, config);
    Dispatcher dispatcher(group);
    std::vector<float> x(2 * 8, 1.0f), w(2, 1.0f);
    std::vector<int32_t> idx = {rank, 3};
    const ExpertBatch batch = dispatcher.dispatch(TensorView::matrix(x.data(), DType::kF32, 2, 8),
                                                  TensorView::matrix(idx.data(), DType::kI32, 2, 1),
                                                  TensorView::matrix(w.data(), DType::kF32, 2, 1));
    EXPECT_FALSE(batch.handle.onDevice());
    EXPECT_FALSE(batch.x.device().isCuda());
  });
}

TEST(CudaTensors, RouterRefusesCudaLogitsWithoutAGpu) {
  if (gpuUsable()) GTEST_SKIP() << "a GPU is usable here";
  RouterOptions o;
  o.topk = 2;
  const Router router(o);
  std::vector<float> host(8 * 16, 0.5f);
  try {
    (void)router.route(fakeCuda(host, 8, 16));
    FAIL() << "routing CUDA logits without a GPU must throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidUsage) << e.what();
  }
}

// The losses and the backward of a routing wholly on a (missing) GPU take the device path, which
// says why before touching any pointer; grad_logits keeps what it held. The routing's "GPU"
// tensors are host memory from an application allocator: nothing may read them.
TEST(CudaTensors, RouterLossesAndBackwardOnAMissingGpuSayWhy) {
  if (gpuUsable()) GTEST_SKIP() << "a GPU is usable here";
  RouterOptions o;
  o.topk = 2;
  const Router router(o);
  std::vector<float> logits(8 * 16, 0.5f), grad(8 * 16, 7.0f), grad_w(16, 1.0f);
  const Routing host = router.route(TensorView::matrix(logits.data(), DType::kF32, 8, 16));
  setDeviceAllocator(testing::hostLedgerAllocator());
  Routing on_gpu = host;
  on_gpu.topk_idx = Tensor::empty({8, 2}, DType::kI32, Device::cuda(0), ExecContext{});
  on_gpu.selected_idx = Tensor::empty({8, 2}, DType::kI32, Device::cuda(0), ExecContext{});
  on_gpu.topk_weights = Tensor::empty({8, 2}, DType::kF32, Device::cuda(0), ExecContext{});
  setDeviceAllocator(nullptr);
  const TensorView d_logits = fakeCuda(logits, 8, 16);
  const TensorView d_grad = fakeCuda(grad, 8, 16);
  const TensorView d_grad_w = fakeCuda(grad_w, 8, 2);
  for (bool losses : {true, false}) {
    try {
      if (losses) {
        (void)router.losses(d_logits, on_gpu, {0.01, 0, 0.001});
      } else {
        router.backward(d_logits, on_gpu, &d_grad_w, {0.01, 0, 0.001}, d_grad);
      }
      FAIL() << (losses ? "losses" : "backward") << " of GPU logits without a GPU must throw";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), StatusCode::kInvalidUsage) << e.what();
      EXPECT_NE(std::string(e.what()).find("a CUDA tensor was passed"), std::string::npos)
          << e.what();
    }
  }
  for (float v : grad) ASSERT_EQ(v, 7.0f) << "grad_logits was written";
}

TEST(CudaTensors, DispatchFailsOnEveryRankNotJustTheOneWithTheCudaTensor) {
  if (gpuUsable()) GTEST_SKIP() << "a GPU is usable here";
  runThreads(3, [](LocalWorld& world, int rank) {
    GroupConfig config;
    config.num_experts = 6;
    config.hidden = 16;
    config.dtype = DType::kF32;
    config.topk = 2;
    config.timeout_ms = 20000;
    Group group = Group::create(world, rank, config);
    Dispatcher dispatcher(group);
    const int64_t tokens = 4;
    std::vector<float> x(tokens * 16, 1.0f);
    std::vector<int32_t> idx = {0, 1, 2, 3, 4, 5, 1, 2};
    std::vector<float> w(tokens * 2, 0.5f);
    TensorView xv = TensorView::matrix(x.data(), DType::kF32, tokens, 16);
    if (rank == 1) xv.device = Device::cuda(0);  // only rank 1 passes a (missing) GPU tensor
    const TensorView iv = TensorView::matrix(idx.data(), DType::kI32, tokens, 2);
    const TensorView wv = TensorView::matrix(w.data(), DType::kF32, tokens, 2);
    try {
      (void)dispatcher.dispatch(xv, iv, wv);
      FAIL() << "rank " << rank << ": dispatch must fail";
    } catch (const Error& e) {
      if (rank == 1) {
        EXPECT_EQ(e.code(), StatusCode::kInvalidUsage) << e.what();
      } else {
        EXPECT_EQ(e.code(), StatusCode::kRemoteError) << e.what();
        EXPECT_NE(std::string(e.what()).find("rank 1"), std::string::npos) << e.what();
      }
    }
  });
}

TEST(CudaTensors, GroupedGemmRefusesMixedDevices) {
  std::vector<float> a(8 * 4, 1.0f), b(1 * 4 * 3, 1.0f), c(8 * 3, 0.0f);
  const TensorView av = fakeCuda(a, 8, 4);
  TensorView bv = TensorView::matrix(b.data(), DType::kF32, 4, 3);
  bv.ndim = 3;
  bv.shape[0] = 1;
  bv.shape[1] = 4;
  bv.shape[2] = 3;
  TensorView cv = TensorView::matrix(c.data(), DType::kF32, 8, 3);
  cv.device = Device::cuda(0);
  try {
    groupedGemm(GemmForm::kNN, av, bv, cv, {8}, {0, 8});
    FAIL() << "mixed devices must be refused";
  } catch (const Error& e) {
    // With no usable GPU the device check may speak first; either way nothing is touched.
    EXPECT_TRUE(e.code() == StatusCode::kInvalidArgument || e.code() == StatusCode::kInvalidUsage)
        << e.what();
  }
  EXPECT_EQ(c[0], 0.0f);
}

// A group of 4 experts of hidden 8 routing top-2, and a layer for it.
Group smallGroup(LocalWorld& world, int rank) {
  GroupConfig g;
  g.num_experts = 4;
  g.hidden = 8;
  g.topk = 2;
  return Group::create(world, rank, g);
}

MoeLayerConfig smallLayer() {
  MoeLayerConfig lc;
  lc.ffn = 4;
  lc.router.topk = 2;
  return lc;
}

TEST(CudaTensors, ExpertsOnAMissingGpuAreRefusedAtCreation) {
  if (gpuUsable()) GTEST_SKIP() << "a GPU is usable here";
  ExpertMlpConfig config{8, 4, 2, Activation::kSwiGLU, Device::cuda(0)};
  try {
    ExpertMlp mlp(config);
    FAIL() << "experts on a missing GPU must be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidUsage) << e.what();
  }
  runThreads(1, [](LocalWorld& world, int rank) {
    Group group = smallGroup(world, rank);
    MoeLayerConfig lc = smallLayer();
    lc.device = Device::cuda(0);
    EXPECT_THROW(MoeLayer(group, lc), Error);
  });
}

// Host experts and a host layer refuse a CUDA input with a message naming both devices, before
// touching it or starting a collective.
TEST(CudaTensors, HostExpertsAndLayerRefuseCudaInputs) {
  ExpertMlp mlp(ExpertMlpConfig{8, 4, 2, Activation::kGelu});
  std::vector<float> x(16 * 8, 1.0f);
  try {
    (void)mlp.forward(fakeCuda(x, 16, 8), {8, 8}, {0, 8, 16});
    FAIL() << "a CUDA input to host experts must be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidArgument) << e.what();
    EXPECT_NE(std::string(e.what()).find("cuda:0"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cpu"), std::string::npos) << e.what();
  }
  runThreads(2, [](LocalWorld& world, int rank) {
    Group group = smallGroup(world, rank);
    MoeLayer layer(group, smallLayer());
    std::vector<float> tokens(6 * 8, 0.25f);
    try {
      (void)layer.forward(fakeCuda(tokens, 6, 8));
      FAIL() << "rank " << rank << ": a CUDA input to a host layer must be refused";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), StatusCode::kInvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find("MoeLayerConfig.device"), std::string::npos) << e.what();
    }
  });
}

TEST(CudaTensors, BiasUpdateOnAMissingGpuSaysWhyAndTouchesNothing) {
  if (gpuUsable()) GTEST_SKIP() << "a GPU is usable here";
  std::vector<float> bias(4, 0.5f);
  TensorView v = TensorView::vector(bias.data(), DType::kF32, 4);
  v.device = Device::cuda(0);
  try {
    updateExpertBias(v, {1, 2, 3, 4}, 0.1f);
    FAIL() << "a bias on a missing GPU must be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidUsage) << e.what();
  }
  for (float b : bias) EXPECT_EQ(b, 0.5f);
}

}  // namespace
}  // namespace moecomm
