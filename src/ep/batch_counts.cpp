#include "src/ep/batch_counts.hpp"

#include "src/ep/handle_impl.hpp"

namespace moecomm {

Status deferCounts(ExpertBatch& batch) {
  const CountsLayout at{static_cast<int64_t>(batch.expert_demand.size()),
                        static_cast<int64_t>(batch.tokens_from_rank.size())};
  try {
    batch.device_counts = Tensor::empty({at.size()}, DType::kI64);
  } catch (const Error& e) {
    return Status(e.code(), e.what());
  }
  auto* c = batch.device_counts.as<int64_t>();
  for (int64_t e = 0; e < at.local_experts; ++e) {
    c[at.demand(e)] = batch.expert_demand[e];
    c[at.kept(e)] = batch.expert_counts[e];
  }
  for (int64_t r = 0; r < at.ranks; ++r) c[at.fromRank(r)] = batch.tokens_from_rank[r];
  c[at.refused()] = batch.refused;
  c[at.badSlot()] = -1;  // the host path refused bad ids before it got here
  c[at.repeatedSlot()] = -1;
  clearHostCounts(batch);
  return Status::ok();
}

void clearHostCounts(ExpertBatch& batch) {
  batch.expert_demand.clear();
  batch.expert_counts.clear();
  batch.tokens_from_rank.clear();
  batch.refused = -1;
}

void collectCounts(ExpertBatch& batch, ExecContext context) {
  if (!batch.device_counts.defined() || !batch.expert_counts.empty()) return;  // on the host
  const int64_t local_experts = static_cast<int64_t>(batch.expert_offsets.size()) - 1;
  const int64_t size = batch.device_counts.numel();
  const DispatchHandle::Impl* handle = batch.handle.impl();
  if (batch.device_counts.dtype() != DType::kI64 || local_experts < 1 || handle == nullptr ||
      size != dispatchCountsSize(local_experts, handle->ranks)) {
    throwIfError(makeError(StatusCode::kInvalidArgument,
                           "device_counts is {}, not the i64[2L + R + 3] of the batch's sync-free "
                           "dispatch; pass the ExpertBatch dispatch returned",
                           batch.device_counts.view().describe()));
  }
  const CountsLayout at{local_experts, handle->ranks};
  const Tensor host = batch.device_counts.device().isCuda()
                          ? copyTo(batch.device_counts, Device::cpu(), context)
                          : batch.device_counts;
  const int64_t* c = host.as<const int64_t>();
  const int topk = handle->topk;
  if (c[at.badSlot()] >= 0) {
    throwIfError(makeError(StatusCode::kInvalidArgument,
                           "topk_idx[{}, {}] names no expert: ids must be -1 or in [0, {}); the "
                           "sync-free dispatch routed that slot nowhere",
                           c[at.badSlot()] / topk, c[at.badSlot()] % topk,
                           local_experts * handle->ranks));
  }
  if (c[at.repeatedSlot()] >= 0) {
    throwIfError(makeError(StatusCode::kInvalidArgument,
                           "topk_idx[{}, {}] repeats an expert token {} already names; each token "
                           "names an expert at most once (the sync-free dispatch routed it twice)",
                           c[at.repeatedSlot()] / topk, c[at.repeatedSlot()] % topk,
                           c[at.repeatedSlot()] / topk));
  }
  batch.expert_demand.assign(c + at.demand(0), c + at.demand(local_experts));
  batch.expert_counts.assign(c + at.kept(0), c + at.kept(local_experts));
  batch.tokens_from_rank.assign(c + at.fromRank(0), c + at.fromRank(at.ranks));
  batch.refused = c[at.refused()];
}

}  // namespace moecomm
