// The C ABI: a full forward and backward step through status codes, and errors that never throw.
#include <gtest/gtest.h>
#include <moecomm/moecomm.h>

#include <barrier>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

extern "C" int moecomm_c_header_default_alignment(void);

namespace {

moecommTensor_t matrix(void* data, moecommDataType_t dtype, int64_t rows, int64_t cols) {
  moecommTensor_t t{};
  t.data = data;
  t.dtype = dtype;
  t.device_type = moecommDeviceCpu;
  t.ndim = 2;
  t.sizes[0] = rows;
  t.sizes[1] = cols;
  return t;
}

// Runs rank_main(world, rank, failure) for ranks 0 and 1 on two threads of one world; a rank
// reports what went wrong in `failure`, which must stay empty.
template <typename RankMain>
void onTwoRanks(RankMain rank_main) {
  moecommWorld_t world = nullptr;
  ASSERT_EQ(moecommWorldCreate(2, &world), moecommSuccess);
  std::vector<std::string> failures(2);
  std::thread t0([&] { rank_main(world, 0, failures[0]); });
  std::thread t1([&] { rank_main(world, 1, failures[1]); });
  t0.join();
  t1.join();
  moecommWorldDestroy(world);
  EXPECT_EQ(failures[0], "");
  EXPECT_EQ(failures[1], "");
}

// A group of `world` for `rank` with the given shape; `adjust` sets the rest of the config.
// Null (and `failure` set) when creation fails.
template <typename Adjust>
moecommGroup_t makeGroup(moecommWorld_t world, int rank, int experts, int hidden,
                         moecommDataType_t dtype, int topk, std::string& failure, Adjust adjust) {
  moecommConfig_t config = MOECOMM_CONFIG_INIT;
  config.num_experts = experts;
  config.hidden = hidden;
  config.dtype = dtype;
  config.topk = topk;
  adjust(config);
  moecommGroup_t group = nullptr;
  if (moecommGroupCreate(world, rank, &config, &group) != moecommSuccess) {
    failure = moecommGetLastError(nullptr);
    return nullptr;
  }
  return group;
}

TEST(CApi, HeaderIsCAndInitializerIsValid) {
  EXPECT_EQ(moecomm_c_header_default_alignment(), 1);
  int version = 0;
  EXPECT_EQ(moecommGetVersion(&version), moecommSuccess);
  EXPECT_EQ(version, MOECOMM_VERSION_CODE);
  EXPECT_STREQ(moecommGetErrorString(moecommTimeout), "timeout");
  EXPECT_STREQ(moecommGetErrorString(static_cast<moecommResult_t>(99)), "unknown result code");
}

TEST(CApi, DispatchCombineRoundTripWithTwoRanks) {
  onTwoRanks([](moecommWorld_t world, int rank, std::string& failure) {
    moecommGroup_t group = makeGroup(world, rank, 4, 8, moecommFloat32, 2, failure,
                                     [](moecommConfig_t& c) { c.expert_alignment = 4; });
    if (group == nullptr) return;
    std::vector<float> x(3 * 8), w = {0.5f, 0.25f, 1.0f, 0.0f, 0.75f, 0.25f};
    for (size_t i = 0; i < x.size(); ++i) x[i] = float(i) + 100.0f * rank;
    std::vector<int32_t> idx = {0, 3, 2, -1, 1, 2};
    moecommTensor_t xt = matrix(x.data(), moecommFloat32, 3, 8);
    moecommTensor_t it = matrix(idx.data(), moecommInt32, 3, 2);
    moecommTensor_t wt = matrix(w.data(), moecommFloat32, 3, 2);
    moecommHandle_t handle = nullptr;
    if (moecommDispatch(group, &xt, &it, &wt, &handle, nullptr) != moecommSuccess) {
      failure = moecommGetLastError(group);
      return;
    }
    moecommTensor_t batch_x, row_w;
    int64_t counts[2], offsets[3];
    moecommHandleGetBatch(handle, &batch_x, &row_w, counts, offsets);
    if (offsets[1] % 4 != 0) failure = "offsets not aligned";
    moecommTensor_t slots;
    if (moecommHandleGetTokenSlots(handle, &slots, nullptr) != moecommInvalidArgument) {
      failure = "an expert-major handle gave token slots";
    }
    // Identity experts: combine must give back sum_j w_tj * x[t].
    std::vector<float> out(3 * 8, 0.0f);
    moecommTensor_t ot = matrix(out.data(), moecommFloat32, 3, 8);
    if (moecommCombine(group, &batch_x, handle, &ot, nullptr) != moecommSuccess) {
      failure = moecommGetLastError(group);
    }
    for (int t = 0; t < 3; ++t) {
      float wsum = (idx[t * 2] >= 0 ? w[t * 2] : 0) + (idx[t * 2 + 1] >= 0 ? w[t * 2 + 1] : 0);
      for (int h = 0; h < 8; ++h) {
        if (std::abs(out[t * 8 + h] - wsum * x[t * 8 + h]) > 1e-4f) failure = "combine mismatch";
      }
    }
    // Backward of dispatch with unit gradients counts each token's valid slots.
    std::vector<float> ones(batch_x.sizes[0] * 8, 1.0f), gx(3 * 8);
    moecommTensor_t gr = matrix(ones.data(), moecommFloat32, batch_x.sizes[0], 8);
    moecommTensor_t gxt = matrix(gx.data(), moecommFloat32, 3, 8);
    if (moecommDispatchBackward(group, &gr, handle, &gxt, nullptr) != moecommSuccess ||
        gx[0] != 2.0f || gx[8] != 1.0f) {
      failure = "dispatch backward";
    }
    moecommHandleDestroy(handle);
    moecommGroupDestroy(group);
  });
}

// Token-major batches through the C ABI: one row per token and rank, its local slots, and a
// combine that sums the ranks' rows (the expert-major round trip checks that its handle has no
// slots).
TEST(CApi, TokenMajorBatchesCarrySlotsAndCombineSumsRanks) {
  onTwoRanks([](moecommWorld_t world, int rank, std::string& failure) {
    moecommGroup_t group = makeGroup(world, rank, 4, 8, moecommFloat32, 2, failure,
                                     [](moecommConfig_t& c) { c.token_major = 1; });
    if (group == nullptr) return;
    // Token 0 visits both ranks (experts 0 and 3), token 1 only rank 1 (experts 2 and 3).
    std::vector<float> x(2 * 8), w = {0.5f, 0.25f, 1.0f, 2.0f};
    for (size_t i = 0; i < x.size(); ++i) x[i] = float(i) + 100.0f * rank;
    std::vector<int32_t> idx = {0, 3, 2, 3};
    moecommTensor_t xt = matrix(x.data(), moecommFloat32, 2, 8);
    moecommTensor_t it = matrix(idx.data(), moecommInt32, 2, 2);
    moecommTensor_t wt = matrix(w.data(), moecommFloat32, 2, 2);
    moecommHandle_t handle = nullptr;
    if (moecommDispatch(group, &xt, &it, &wt, &handle, nullptr) != moecommSuccess) {
      failure = moecommGetLastError(group);
      return;
    }
    moecommTensor_t bx, bi, bw;
    moecommHandleGetBatch(handle, &bx, nullptr, nullptr, nullptr);
    if (moecommHandleGetTokenSlots(handle, &bi, &bw) != moecommSuccess) {
      failure = moecommGetLastError(nullptr);
      return;
    }
    const int64_t rows = rank == 0 ? 2 : 4;  // rank 0 gets token 0 of each rank
    if (bx.sizes[0] != rows || bi.sizes[0] != rows || bi.sizes[1] != 2 || bw.sizes[1] != 2) {
      failure = "token-major shapes";
    } else {
      const auto* ids = static_cast<const int32_t*>(bi.data);
      const auto* ws = static_cast<const float*>(bw.data);
      // Rank 0's rows: (rank 0, token 0), (rank 1, token 0), each with expert 0 in slot 0.
      // Rank 1's: token 0 (slot 1, local expert 1) and token 1 (local 0, local 1) of each rank.
      const std::vector<int32_t> want_ids = rank == 0
                                                ? std::vector<int32_t>{0, -1, 0, -1}
                                                : std::vector<int32_t>{-1, 1, 0, 1, -1, 1, 0, 1};
      const std::vector<float> want_w =
          rank == 0 ? std::vector<float>{0.5f, 0, 0.5f, 0}
                    : std::vector<float>{0, 0.25f, 1.0f, 2.0f, 0, 0.25f, 1.0f, 2.0f};
      for (size_t i = 0; i < want_ids.size(); ++i) {
        if (ids[i] != want_ids[i] || ws[i] != want_w[i]) failure = "slot " + std::to_string(i);
      }
    }
    // Experts that hand back each row as it is: combine gives each token one copy per rank.
    std::vector<float> out(2 * 8, 0.0f);
    moecommTensor_t ot = matrix(out.data(), moecommFloat32, 2, 8);
    if (moecommCombine(group, &bx, handle, &ot, nullptr) != moecommSuccess) {
      failure = moecommGetLastError(group);
    }
    for (int h = 0; h < 8; ++h) {
      if (out[h] != 2 * x[h] || out[8 + h] != x[8 + h]) failure = "token-major combine";
    }
    moecommHandleDestroy(handle);
    moecommGroupDestroy(group);
  });
}

// FP8 dispatch through the C ABI: rows and their block scales arrive together, intact, and a
// batch without scales says so.
TEST(CApi, Fp8DispatchCarriesScales) {
  onTwoRanks([](moecommWorld_t world, int rank, std::string& failure) {
    // hidden 130: two scale blocks, the second of 2 values.
    moecommGroup_t group =
        makeGroup(world, rank, 2, 130, moecommFp8E4M3, 1, failure, [](moecommConfig_t&) {});
    if (group == nullptr) return;
    // Token t of rank r: every value byte 16 * r + t, scales (r + 1, t + 2); token t goes to
    // expert t % 2, so each rank's expert gets one token from each rank.
    std::vector<uint8_t> x(2 * 130);
    std::vector<float> scales = {float(rank + 1), 2.0f, float(rank + 1), 3.0f}, w = {1.0f, 1.0f};
    for (int t = 0; t < 2; ++t) std::memset(x.data() + t * 130, 16 * rank + t, 130);
    std::vector<int32_t> idx = {0, 1};
    moecommTensor_t xt = matrix(x.data(), moecommFp8E4M3, 2, 130);
    moecommTensor_t st = matrix(scales.data(), moecommFloat32, 2, 2);
    moecommTensor_t it = matrix(idx.data(), moecommInt32, 2, 1);
    moecommTensor_t wt = matrix(w.data(), moecommFloat32, 2, 1);
    moecommHandle_t handle = nullptr;
    if (moecommDispatch(group, &xt, &it, &wt, &handle, nullptr) != moecommInvalidArgument) {
      failure = "an fp8 dispatch without scales was accepted";
    }
    if (moecommDispatchFp8(group, &xt, &st, &it, &wt, &handle, nullptr) != moecommSuccess) {
      failure = moecommGetLastError(group);
      return;
    }
    moecommTensor_t bx, bs;
    moecommHandleGetBatch(handle, &bx, nullptr, nullptr, nullptr);
    if (moecommHandleGetScales(handle, &bs) != moecommSuccess || bs.sizes[0] != 2 ||
        bs.sizes[1] != 2 || bx.dtype != moecommFp8E4M3) {
      failure = "batch shapes";
    } else {
      const auto* rows = static_cast<const uint8_t*>(bx.data);
      const auto* sc = static_cast<const float*>(bs.data);
      for (int src = 0; src < 2; ++src) {  // row src came from rank src, token `rank`
        if (rows[src * 130] != 16 * src + rank || rows[src * 130 + 129] != 16 * src + rank ||
            sc[src * 2] != float(src + 1) || sc[src * 2 + 1] != float(rank + 2)) {
          failure = "row or scales from rank " + std::to_string(src);
        }
      }
    }
    moecommHandleDestroy(handle);
    moecommGroupDestroy(group);
  });
}

TEST(CApi, ErrorsReturnCodesAndMessagesNotExceptions) {
  moecommWorld_t world = nullptr;
  ASSERT_EQ(moecommWorldCreate(1, &world), moecommSuccess);
  moecommConfig_t config = MOECOMM_CONFIG_INIT;
  moecommGroup_t group = reinterpret_cast<moecommGroup_t>(0x1);
  // num_experts = 0.
  EXPECT_EQ(moecommGroupCreate(world, 0, &config, &group), moecommInvalidArgument);
  EXPECT_EQ(group, reinterpret_cast<moecommGroup_t>(0x1));  // untouched on failure
  EXPECT_NE(std::string(moecommGetLastError(nullptr)).find("num_experts"), std::string::npos);
  config.magic = 0;
  EXPECT_EQ(moecommGroupCreate(world, 0, &config, &group), moecommInvalidArgument);
  EXPECT_NE(std::string(moecommGetLastError(nullptr)).find("MOECOMM_CONFIG_INIT"),
            std::string::npos);
  EXPECT_EQ(moecommGroupCreate(world, 0, nullptr, &group), moecommInvalidArgument);
  EXPECT_EQ(moecommWorldCreate(0, &world), moecommInvalidArgument);

  config = MOECOMM_CONFIG_INIT;
  config.num_experts = 2;
  config.hidden = 4;
  config.topk = 1;
  config.dtype = moecommFloat32;
  ASSERT_EQ(moecommGroupCreate(world, 0, &config, &group), moecommSuccess);
  moecommHandle_t handle = nullptr;
  std::vector<float> x(4);
  std::vector<int32_t> idx = {0};
  std::vector<float> w = {1.0f};
  moecommTensor_t xt = matrix(x.data(), moecommBfloat16, 1, 4);  // group dtype is f32
  moecommTensor_t it = matrix(idx.data(), moecommInt32, 1, 1);
  moecommTensor_t wt = matrix(w.data(), moecommFloat32, 1, 1);
  EXPECT_EQ(moecommDispatch(group, &xt, &it, &wt, &handle, nullptr), moecommInvalidArgument);
  EXPECT_EQ(handle, nullptr);
  EXPECT_NE(std::string(moecommGetLastError(group)).find("x has dtype bf16"), std::string::npos);
  EXPECT_EQ(moecommDispatch(group, nullptr, &it, &wt, &handle, nullptr), moecommInvalidArgument);
  moecommGroupDestroy(group);
  moecommWorldDestroy(world);
}

// A framework's process group, faked with threads and a std::barrier: what the callbacks see.
struct FakeProcessGroup {
  explicit FakeProcessGroup(int n) : size(n), sync(n), slots(static_cast<size_t>(n) * 65536) {}
  int size;
  std::barrier<> sync;
  std::vector<unsigned char> slots;
};
struct FakeRank {
  FakeProcessGroup* group;
  int rank;
};

int fakeAllGather(const void* send, void* recv, size_t bytes, void* context) {
  auto* me = static_cast<FakeRank*>(context);
  if (bytes > 65536) return 3;
  me->group->sync.arrive_and_wait();  // the previous round's readers are done
  std::memcpy(me->group->slots.data() + bytes * me->rank, send, bytes);
  me->group->sync.arrive_and_wait();
  std::memcpy(recv, me->group->slots.data(), bytes * me->group->size);
  return 0;
}

TEST(CApi, WorldFromAFrameworksCallbacks) {
  FakeProcessGroup pg(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&pg, r] {
      FakeRank me{&pg, r};
      moecommBootstrapCallbacks_t callbacks = MOECOMM_BOOTSTRAP_CALLBACKS_INIT;
      callbacks.rank = r;
      callbacks.nranks = 2;
      callbacks.all_gather = fakeAllGather;
      callbacks.context = &me;
      moecommWorld_t world = nullptr;
      ASSERT_EQ(moecommWorldFromCallbacks(&callbacks, &world), moecommSuccess);
      int rank = -2, size = 0;
      EXPECT_EQ(moecommWorldRank(world, &rank), moecommSuccess);
      EXPECT_EQ(moecommWorldSize(world, &size), moecommSuccess);
      EXPECT_EQ(rank, r);
      EXPECT_EQ(size, 2);
      moecommConfig_t config = MOECOMM_CONFIG_INIT;
      config.num_experts = 4;
      config.hidden = 8;
      config.dtype = moecommFloat32;
      config.topk = 2;
      config.timeout_ms = 10000;
      moecommGroup_t group = nullptr;
      EXPECT_EQ(moecommGroupCreate(world, 1 - r, &config, &group), moecommInvalidArgument)
          << moecommGetLastError(nullptr);  // another process's rank
      ASSERT_EQ(moecommGroupCreate(world, -1, &config, &group), moecommSuccess)
          << moecommGetLastError(nullptr);
      EXPECT_EQ(moecommGroupRank(group, &rank), moecommSuccess);
      EXPECT_EQ(rank, r);
      moecommGroupDestroy(group);
      moecommWorldDestroy(world);
    });
  }
  for (auto& t : threads) t.join();

  moecommBootstrapCallbacks_t stale = MOECOMM_BOOTSTRAP_CALLBACKS_INIT;
  stale.size = 8;
  moecommWorld_t world = nullptr;
  EXPECT_EQ(moecommWorldFromCallbacks(&stale, &world), moecommInvalidArgument);
  EXPECT_EQ(world, nullptr);
}

}  // namespace
