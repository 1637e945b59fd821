// Dispatch and combine of CUDA tensors without leaving the GPU: the layout, pack, unpack and
// reductions run as CUDA kernels on the caller's stream. Between ranks of one process (the local
// transport) rows move by device-to-device copies ordered by CUDA events; on the nccl transport,
// by NCCL all-to-alls. The host rounds carry only counts (and, between threads, device pointers
// and events) through the same framed exchange as the CPU engine, so errors, sequence checks and
// deadlines behave the same.
#pragma once

#include "moecomm/dispatch.hpp"
#include "src/ep/dispatcher_state.hpp"

namespace moecomm {

// True when dispatch of these tensors runs GPU-native: this build has CUDA, MOECOMM_CUDA_NATIVE is
// not 0, the group's transport is `local` (pointers shared between threads) or `nccl`, and x,
// topk_idx (i32) and topk_weights are CUDA tensors, and for an fp8e4m3 group x_scales too.
// Otherwise CUDA tensors are staged through pinned host memory.
bool deviceExchangeApplies(const Group::Impl& group, const TensorView& x,
                           const TensorView& topk_idx, const TensorView& topk_weights,
                           const TensorView* x_scales = nullptr);

// True when `handle` came from a GPU-native dispatch.
bool isDeviceHandle(const DispatchHandle& handle);

// x_scales: the fp8e4m3 group's [T, ceil(H / 128)] f32 scales, else null.
Status deviceDispatch(Dispatcher::State& state, const TensorView& x, const TensorView* x_scales,
                      const TensorView& topk_idx, const TensorView& topk_weights,
                      ExecContext context, ExpertBatch* out);

// combine (weighted) or dispatchBackward (not weighted).
Status deviceReduce(Dispatcher::State& state, const TensorView& rows, const DispatchHandle& handle,
                    const TensorView& out, bool weighted, ExecContext context);

Status deviceCombineBackward(Dispatcher::State& state, const TensorView& grad_out,
                             const TensorView& y, const DispatchHandle& handle,
                             const TensorView& grad_y, const TensorView& grad_weights,
                             ExecContext context);

}  // namespace moecomm
