#include "src/ep/collectives.hpp"

#include <cstring>

#include "moecomm/router.hpp"
#include "src/ep/exchange.hpp"

namespace moecomm {

Status allReduceSum(Group::Impl& group, std::vector<int64_t>& values) {
  Staging staging;
  staging.prepare(group.size);
  const uint64_t sequence = group.takeSequence();
  const size_t bytes = values.size() * sizeof(int64_t);
  for (int p = 0; p < group.size; ++p) {
    std::byte* payload = staging.sendPayload(p, bytes, WireOp::kAllReduce, sequence,
                                             static_cast<int64_t>(values.size()));
    if (bytes > 0) std::memcpy(payload, values.data(), bytes);
    staging.expect(p, bytes);
  }
  MOECOMM_RETURN_IF_ERROR(exchange(group, staging, WireOp::kAllReduce, sequence, 0, Status::ok()));
  std::vector<int64_t> sum(values.size(), 0);
  for (int p = 0; p < group.size; ++p) {
    if (staging.received[p] != sizeof(WireHeader) + bytes) {
      return makeError(StatusCode::kInvalidUsage,
                       "rank {}: allReduce of {} values, but rank {} sent {} bytes; every rank "
                       "must pass the same length",
                       group.rank, values.size(), p, staging.received[p] - sizeof(WireHeader));
    }
    const auto* in = reinterpret_cast<const int64_t*>(staging.recvPayload(p));
    for (size_t i = 0; i < values.size(); ++i) sum[i] += in[i];
  }
  values = std::move(sum);
  return Status::ok();
}

std::vector<int64_t> globalLoad(Group& group, const LoadStats& local) {
  std::vector<int64_t> values = local.tokens_per_expert;
  Status status = allReduceSum(group.impl(), values);
  if (!status.isOk()) group.impl().raise(status);
  return values;
}

}  // namespace moecomm
