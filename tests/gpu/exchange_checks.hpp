// One rank's share of the dispatch/combine checks with CUDA tensors: the same call on host and on
// GPU tensors, compared bit for bit, forward and both backward passes. The rank's group comes from
// the caller, so the checks run on ranks as threads (test_gpu_engine) and as launched processes
// (test_gpu_launched) alike. Outputs are poisoned first, so unwritten elements fail.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "moecomm/dispatch.hpp"
#include "moecomm/group.hpp"
#include "moecomm/quant.hpp"
#include "tests/gpu/gpu_test.hpp"
#include "tests/gpu/tensors.hpp"

namespace moecomm::gputest {

// Combine and both backward passes of one dispatch, on the host and the GPU, through each one's
// handle: y (the experts' output rows, host and GPU copies) is combined and sent back as the
// rows' gradient, and a random grad_out goes through combine's backward.
inline void expectSameReductions(Dispatcher& host_d, Dispatcher& dev_d, const ExpertBatch& hb,
                                 const ExpertBatch& db, const Tensor& y, const Tensor& dy,
                                 int64_t tokens, int64_t hidden, int topk, cudaStream_t stream,
                                 const std::string& tag) {
  const ExecContext ctx{stream};
  const Tensor host_out = host_d.combine(y.view(), hb.handle);
  Tensor dev_out = poisoned({tokens, hidden}, DType::kBF16);
  dev_d.combine(dy.view(), db.handle, dev_out.view(), ctx);
  GPU_CHECK(sameBytes(host_out.view(), onHost(dev_out.view()).view()), tag << ": combine differs");
  Tensor host_gx = Tensor::empty({tokens, hidden}, DType::kBF16);
  Tensor dev_gx = poisoned({tokens, hidden}, DType::kBF16);
  host_d.dispatchBackward(y.view(), hb.handle, host_gx.view());
  dev_d.dispatchBackward(dy.view(), db.handle, dev_gx.view(), ctx);
  GPU_CHECK(sameBytes(host_gx.view(), onHost(dev_gx.view()).view()),
            tag << ": dispatch backward differs");
  const Tensor grad_out = randomHost({tokens, hidden}, DType::kBF16);
  const Tensor d_grad_out = onGpu(grad_out, stream);
  const int64_t rows = y.dim(0);
  Tensor host_gy = Tensor::empty({rows, hidden}, DType::kBF16);
  Tensor host_gw = Tensor::empty({tokens, topk}, DType::kF32);
  Tensor dev_gy = poisoned({rows, hidden}, DType::kBF16);
  Tensor dev_gw = poisoned({tokens, topk}, DType::kF32);
  host_d.combineBackward(grad_out.view(), y.view(), hb.handle, host_gy.view(), host_gw.view());
  dev_d.combineBackward(d_grad_out.view(), dy.view(), db.handle, dev_gy.view(), dev_gw.view(), ctx);
  GPU_CHECK(sameBytes(host_gy.view(), onHost(dev_gy.view()).view()),
            tag << ": combine backward grad_y differs");
  // The dots sum in f64 in another order on the GPU: equal up to the last f32 bit.
  GPU_CHECK(closeFloats(host_gw.view(), onHost(dev_gw.view()).view(), 1e-6f),
            tag << ": combine backward grad_weights differs");
}

// The transports that read GPU memory run i32 ids GPU-native; the others (ucx, mpi) are staged
// through pinned host memory whatever the ids.
inline bool transportReadsGpuMemory(const std::string& transport) {
  return transport == "local" || transport == "nccl";
}

// A sync-free batch (DispatchOptions::sync_free) holds its counts in device_counts, on the GPU for
// CUDA inputs, with the host vectors empty; they must equal the host engine's bit for bit, and
// collectCounts must bring them to the host. Batches of other options pass through.
inline void collectSyncFreeCounts(ExpertBatch& hb, ExpertBatch& db, bool sync_free,
                                  cudaStream_t stream, const std::string& tag) {
  if (!sync_free) {
    GPU_CHECK(!db.device_counts.defined(), tag << ": only sync-free batches carry device_counts");
    return;
  }
  GPU_CHECK(db.expert_counts.empty() && db.expert_demand.empty() && db.tokens_from_rank.empty() &&
                db.refused == -1,
            tag << ": a sync-free batch must leave the host counts empty until collectCounts");
  GPU_CHECK(db.device_counts.defined() && db.device_counts.device().isCuda(),
            tag << ": a sync-free batch of CUDA inputs keeps its counts on the GPU");
  GPU_CHECK(sameBytes(hb.device_counts.view(), onHost(db.device_counts.view()).view()),
            tag << ": device_counts differ from the host engine's");
  collectCounts(hb);
  collectCounts(db, ExecContext{stream});
}

// The transport that moves the rows: nccl, else the host transport the group runs on ("auto"
// resolved).
inline std::string rowTransport(const Group& group) {
  return group.config().transport == "nccl" ? "nccl" : group.transportName();
}

struct EngineCase {
  DType idx_dtype;  // i32 runs GPU-native where the transport reads GPU memory; i64 is staged
  DispatchOptions options;
};

// The options every transport's cases run: expert-major aligned to 4 rows, the same capped at
// `capacity` rows per expert, token-major capped, and the capped one padded to capacity and
// dispatched without a host wait (sync_free).
struct CaseOptions {
  DispatchOptions aligned, capped, token_major, sync_free;
};
inline CaseOptions caseOptions(int64_t capacity) {
  CaseOptions o;
  o.aligned.expert_alignment = 4;
  o.capped = o.aligned;
  o.capped.expert_capacity = capacity;
  o.token_major.layout = BatchLayout::kTokenMajor;
  o.token_major.expert_capacity = capacity;
  o.sync_free = o.capped;
  o.sync_free.pad_to_capacity = true;
  o.sync_free.sync_free = true;
  return o;
}

// The bf16 group of the engine cases: 16 experts, H = 72, top-4.
inline GroupConfig engineGroupConfig(const std::string& transport) {
  GroupConfig config;
  config.num_experts = 16;
  config.hidden = 72;
  config.dtype = DType::kBF16;
  config.topk = 4;
  config.transport = transport;
  return config;
}

inline void printEngineCase(const std::string& transport, int ranks, const EngineCase& c) {
  const bool native = c.idx_dtype == DType::kI32 && transportReadsGpuMemory(transport);
  std::printf("         %s ranks=%d %s %s %s capacity=%lld pad=%d%s\n", transport.c_str(), ranks,
              c.idx_dtype == DType::kI32 ? "i32" : "i64", native ? "native" : "staged",
              c.options.layout == BatchLayout::kTokenMajor ? "token-major" : "expert-major",
              static_cast<long long>(c.options.expert_capacity), c.options.pad_to_capacity ? 1 : 0,
              c.options.sync_free ? " sync-free" : "");
  std::fflush(stdout);
}

// One rank of an engine case on a group made from engineGroupConfig: rank 1 sends nothing, a
// hot expert, unused slots (-1); the GPU batch, layout and reductions must equal the host's.
inline void checkDispatchCombineOnRank(Group& group, const EngineCase& c, cudaStream_t stream) {
  const int rank = group.rank();
  const std::string transport = rowTransport(group);
  const bool native = c.idx_dtype == DType::kI32 && transportReadsGpuMemory(transport);
  const bool token_major = c.options.layout == BatchLayout::kTokenMajor;
  const int experts = group.config().num_experts;
  const int topk = group.config().topk;
  const int64_t hidden = group.config().hidden;
  const ExecContext ctx{stream};
  Dispatcher host_d(group, c.options);
  Dispatcher dev_d(group, c.options);
  const int64_t tokens = rank == 1 ? 0 : 50 + 13 * rank;  // rank 1 sends nothing
  const Tensor x = randomHost({tokens, hidden}, DType::kBF16);
  Tensor idx = Tensor::empty({tokens, topk}, c.idx_dtype);
  std::vector<int32_t> perm(static_cast<size_t>(experts));
  std::mt19937 local_rng(static_cast<unsigned>(rank + 1));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), local_rng);
    if (t % 5 == 0) std::swap(perm[0], *std::find(perm.begin(), perm.end(), 0));  // a hot expert
    for (int j = 0; j < topk; ++j) {
      const int32_t e = (t + j) % 7 == 0 ? -1 : perm[j];
      if (c.idx_dtype == DType::kI32) {
        idx.as<int32_t>()[t * topk + j] = e;
      } else {
        idx.as<int64_t>()[t * topk + j] = e;
      }
    }
  }
  Tensor w = Tensor::empty({tokens, topk}, DType::kF32);
  for (int64_t i = 0; i < tokens * topk; ++i) {
    w.as<float>()[i] = 0.1f + 0.01f * static_cast<float>(i % 17);
  }
  const Tensor dx = onGpu(x, stream), didx = onGpu(idx, stream), dw = onGpu(w, stream);
  const std::string tag = "ranks=" + std::to_string(group.size()) + " rank " +
                          std::to_string(rank) + " " + transport +
                          (native ? " native" : " staged") + (token_major ? " token-major" : "");

  ExpertBatch hb = host_d.dispatch(x.view(), idx.view(), w.view());
  ExpertBatch db = dev_d.dispatch(dx.view(), didx.view(), dw.view(), ctx);
  GPU_CHECK(db.handle.onDevice() == native,
            tag << ": the wrong path ran (onDevice " << db.handle.onDevice() << ")");
  GPU_CHECK(sameBytes(hb.x.view(), onHost(db.x.view()).view()), tag << ": dispatched rows differ");
  if (token_major) {  // each token once, with its kept local experts and weights
    // row_weights is expert-major only: a token-major batch leaves it undefined.
    GPU_CHECK(db.x.device().isCuda() && db.topk_idx.device().isCuda() &&
                  db.topk_weights.device().isCuda() && !db.row_weights.defined(),
              tag << ": the token-major batch of CUDA inputs must be on the GPU, "
                     "without row_weights");
    GPU_CHECK(sameBytes(hb.topk_idx.view(), onHost(db.topk_idx.view()).view()),
              tag << ": token-major expert ids differ");
    GPU_CHECK(sameBytes(hb.topk_weights.view(), onHost(db.topk_weights.view()).view()),
              tag << ": token-major weights differ");
  } else {
    GPU_CHECK(db.x.device().isCuda() && db.row_weights.device().isCuda(),
              tag << ": the batch of CUDA inputs must be on the GPU");
    GPU_CHECK(sameBytes(hb.row_weights.view(), onHost(db.row_weights.view()).view()),
              tag << ": row weights differ");
  }
  collectSyncFreeCounts(hb, db, c.options.sync_free, stream, tag);
  GPU_CHECK(hb.expert_counts == db.expert_counts && hb.expert_offsets == db.expert_offsets &&
                hb.tokens_from_rank == db.tokens_from_rank &&
                hb.expert_demand == db.expert_demand && hb.refused == db.refused,
            tag << ": layout differs");

  // Combine and the backward passes with the rows themselves as the expert output.
  expectSameReductions(host_d, dev_d, hb, db, hb.x, db.x, tokens, hidden, topk, stream, tag);
}

// The FP8 group: 8 experts, top-2, H = 200 (a short last scale block, rows that take the 4-byte
// copy path).
inline GroupConfig fp8GroupConfig(const std::string& transport) {
  return {8, 200, DType::kFP8E4M3, 2, 0, transport};
}

// One rank of FP8 dispatch (values and scales as two row payloads) against the CPU engine on the
// same e4m3 rows and scales, bit for bit: the batch, its scales (padding rows zero), the row
// weights and the layout; then combine and both backward passes through the FP8 handle.
inline void checkFp8DispatchOnRank(Group& group, const DispatchOptions& options,
                                   cudaStream_t stream) {
  const int rank = group.rank();
  const std::string transport = rowTransport(group);
  const bool native = transportReadsGpuMemory(transport);
  const bool token_major = options.layout == BatchLayout::kTokenMajor;
  const int experts = group.config().num_experts;
  const int topk = group.config().topk;
  const int64_t hidden = group.config().hidden, blocks = fp8ScaleBlocks(hidden);
  const ExecContext ctx{stream};
  Dispatcher host_d(group, options);
  Dispatcher dev_d(group, options);
  const int64_t tokens = rank == 1 ? 0 : 40 + 11 * rank;
  const Tensor x = randomHost({tokens, hidden}, DType::kF32, -3.0f, 3.0f);
  Tensor q = Tensor::empty({tokens, hidden}, DType::kFP8E4M3);
  Tensor scales = Tensor::empty({tokens, blocks}, DType::kF32);
  quantizeFp8(x.view(), q.view(), scales.view());
  Tensor idx = Tensor::empty({tokens, topk}, DType::kI32);
  Tensor w = Tensor::empty({tokens, topk}, DType::kF32);
  std::mt19937 local_rng(static_cast<unsigned>(rank + 5));
  std::vector<int32_t> perm(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), local_rng);
    for (int j = 0; j < topk; ++j) {
      idx.as<int32_t>()[t * topk + j] = (t + j) % 9 == 0 ? -1 : perm[j];
      w.as<float>()[t * topk + j] = 0.25f + 0.125f * static_cast<float>(j);
    }
  }
  const std::string tag = "fp8 " + transport + " ranks=" + std::to_string(group.size()) + " rank " +
                          std::to_string(rank) + (token_major ? " token-major" : "");
  ExpertBatch hb = host_d.dispatch(q.view(), scales.view(), idx.view(), w.view());
  const Tensor dq = onGpu(q, stream), ds = onGpu(scales, stream), didx = onGpu(idx, stream),
               dw = onGpu(w, stream);
  ExpertBatch db = dev_d.dispatch(dq.view(), ds.view(), didx.view(), dw.view(), ctx);
  GPU_CHECK(db.handle.onDevice() == native,
            tag << (native ? ": FP8 CUDA tensors must take the GPU-native path"
                           : ": FP8 CUDA tensors must be staged on this transport"));
  GPU_CHECK(db.x.device().isCuda() && db.x_scales.device().isCuda(),
            tag << ": the batch must stay on the GPU");
  GPU_CHECK(sameBytes(hb.x.view(), onHost(db.x.view()).view()), tag << ": e4m3 rows differ");
  GPU_CHECK(sameBytes(hb.x_scales.view(), onHost(db.x_scales.view()).view()),
            tag << ": scales differ");
  if (token_major) {
    GPU_CHECK(sameBytes(hb.topk_idx.view(), onHost(db.topk_idx.view()).view()) &&
                  sameBytes(hb.topk_weights.view(), onHost(db.topk_weights.view()).view()),
              tag << ": token-major expert ids or weights differ");
  } else {
    GPU_CHECK(sameBytes(hb.row_weights.view(), onHost(db.row_weights.view()).view()),
              tag << ": row weights differ");
  }
  collectSyncFreeCounts(hb, db, options.sync_free, stream, tag);
  GPU_CHECK(hb.expert_counts == db.expert_counts && hb.expert_offsets == db.expert_offsets &&
                hb.tokens_from_rank == db.tokens_from_rank && hb.refused == db.refused,
            tag << ": layout differs");
  // Combine and the backward passes take bf16 rows through the FP8 handle.
  const int64_t rows = hb.x.dim(0);
  const Tensor y = randomHost({rows, hidden}, DType::kBF16);
  const Tensor dy = onGpu(y, stream);
  expectSameReductions(host_d, dev_d, hb, db, y, dy, tokens, hidden, topk, stream, tag);
}

}  // namespace moecomm::gputest
