// The framing of every message the exchange engine sends: a header that carries the operation,
// its sequence number and the sender's status, so a rank that fails tells its peers instead of
// leaving them waiting, and a rank that calls a different collective is caught.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moecomm {

enum class WireOp : uint32_t {
  kDispatchCounts = 1,
  kDispatchPayload = 2,
  kCombine = 3,
  kDispatchBackward = 4,
  kCombineBackwardGrad = 5,
  kCombineBackwardDots = 6,
  kAllReduce = 7,
  // The GPU-native path (src/ep/device_exchange.cpp): rounds carry device pointers and events.
  kDeviceDispatch = 8,
  kDeviceCombine = 9,
  kDeviceDispatchBackward = 10,
  kDeviceCombineBackward = 11,
};

const char* wireOpName(WireOp op);

struct WireHeader {
  uint32_t magic;
  uint32_t op;
  uint64_t sequence;
  int32_t status;  // StatusCode of the sender; on failure kErrorTextBytes of text follow
  int32_t reserved;
  int64_t count;  // tokens that follow (or, for counts, that will follow)
};
static_assert(sizeof(WireHeader) == 32);

inline constexpr uint32_t kWireMagic = 0x4d4f4543;  // "MOEC"
inline constexpr size_t kErrorTextBytes = 256;

}  // namespace moecomm
