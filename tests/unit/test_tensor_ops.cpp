// The device-neutral elementwise steps of the experts and the layer, on host tensors: conversions
// against the scalar bf16 rounding, the in-place sum, zeroing, copies, and the refusals. Their
// CUDA twins are compared with these through ExpertMlp and MoeLayer in tests/gpu.
#include <gtest/gtest.h>

#include "common/reference.hpp"

#include <vector>

#include "src/core/numeric.hpp"
#include "src/experts/tensor_ops.hpp"

namespace moecomm {
namespace {

using moecomm::testing::randomNormal;

TEST(TensorOps, ConvertRoundsLikeTheScalarBf16AndBack) {
  const Tensor x = randomNormal(7, 13, 3, 3.0f);  // odd sizes: no vector-width assumptions
  Tensor b;
  ASSERT_TRUE(ops::copyAs(x.view(), DType::kBF16, Device::cpu(), {}, &b).isOk());
  ASSERT_EQ(b.dtype(), DType::kBF16);
  for (int64_t i = 0; i < x.numel(); ++i) {
    ASSERT_EQ(b.as<uint16_t>()[i], numeric::floatToBf16(x.as<float>()[i])) << i;
  }
  Tensor back = Tensor::empty({7, 13}, DType::kF32);
  ASSERT_TRUE(ops::convert(b.view(), back.view(), {}).isOk());
  for (int64_t i = 0; i < x.numel(); ++i) {
    EXPECT_EQ(back.as<float>()[i], numeric::bf16ToFloat(b.as<uint16_t>()[i])) << i;
  }
  // The same dtype is a plain copy, in new memory.
  Tensor same;
  ASSERT_TRUE(ops::copyAs(x.view(), DType::kF32, Device::cpu(), {}, &same).isOk());
  ASSERT_NE(same.data(), x.data());
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(same.as<float>()[i], x.as<float>()[i]);
}

TEST(TensorOps, AddIntoAndZero) {
  const Tensor a = randomNormal(5, 9, 4, 3.0f);
  const Tensor b = randomNormal(5, 9, 5, 3.0f);
  std::vector<float> want(static_cast<size_t>(a.numel()));
  for (int64_t i = 0; i < a.numel(); ++i) want[i] = a.as<float>()[i] + b.as<float>()[i];
  ASSERT_TRUE(ops::addInto(a.view(), b.view(), {}).isOk());
  for (int64_t i = 0; i < a.numel(); ++i) EXPECT_EQ(a.as<float>()[i], want[i]) << i;
  ASSERT_TRUE(ops::zero(a.view(), {}).isOk());
  for (int64_t i = 0; i < a.numel(); ++i) EXPECT_EQ(a.as<float>()[i], 0.0f) << i;
}

TEST(TensorOps, RefusesWhatItCannotConvertAndTouchesNothing) {
  const Tensor x = randomNormal(4, 4, 6, 3.0f);
  Tensor wrong_size = Tensor::empty({4, 5}, DType::kF32);
  wrong_size.as<float>()[0] = 42.0f;
  const Status s = ops::convert(x.view(), wrong_size.view(), {});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("f32[4, 5]"), std::string::npos) << s.message();
  EXPECT_EQ(wrong_size.as<float>()[0], 42.0f);
  Tensor ints = Tensor::empty({4, 4}, DType::kI32);
  EXPECT_EQ(ops::convert(x.view(), ints.view(), {}).code(), StatusCode::kInvalidArgument);
  // Operands on two devices are refused before either is touched.
  TensorView on_gpu = wrong_size.view();
  on_gpu.shape[1] = 4;
  on_gpu.device = Device::cuda(0);
  EXPECT_EQ(ops::convert(x.view(), on_gpu, {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ops::addInto(on_gpu, x.view(), {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ops::addInto(x.view(), wrong_size.view(), {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(wrong_size.as<float>()[0], 42.0f);
  // A copy onto another device than the source's is not this function's job.
  Tensor out;
  EXPECT_EQ(ops::copyAs(x.view(), DType::kF32, Device::cuda(0), {}, &out).code(),
            StatusCode::kInvalidArgument);
  EXPECT_FALSE(out.defined());
}

TEST(TensorOps, SameDeviceComparesKindAndIndex) {
  EXPECT_TRUE(ops::sameDevice(Device::cpu(), Device::cpu()));
  EXPECT_TRUE(ops::sameDevice(Device::cuda(1), Device::cuda(1)));
  EXPECT_FALSE(ops::sameDevice(Device::cuda(0), Device::cuda(1)));
  EXPECT_FALSE(ops::sameDevice(Device::cpu(), Device::cuda(0)));
  Device odd_cpu = Device::cpu();
  odd_cpu.index = 3;  // a host device's index means nothing
  EXPECT_TRUE(ops::sameDevice(odd_cpu, Device::cpu()));
}

}  // namespace
}  // namespace moecomm
