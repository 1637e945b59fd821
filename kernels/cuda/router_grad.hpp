// The router's loss terms and logit gradient on the GPU: one thread per token running
// kernels/common/router_grad.hpp, the code the host runs, with the aux loss's per-chunk expert
// fractions counted on the GPU.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/common/router_grad.hpp"

namespace moecomm::cuda {

// f [chunks, E]: each aux chunk's kept assignments per expert over its total (0 when it has
// none), from idx [tokens, topk] (-1: none). counts: [chunks, E] int32 scratch.
cudaError_t auxFractions(const routergrad::Params& p, const int32_t* idx, int32_t* counts,
                         double* f, cudaStream_t stream);

// Doubles of scratch the two kernels below take: 2E for each of their threads (at most 8192).
int64_t routerGradScratch(const routergrad::Params& p);

// out [tokens, E] f32: routergrad::tokenGrad of every token. grad_w [tokens, topk] and f may be
// null (no weights' or aux part).
cudaError_t routerGrad(const routergrad::Params& p, const float* logits, const int32_t* idx,
                       const int32_t* selected, const float* grad_w, const double* f,
                       double* scratch, float* out, cudaStream_t stream);

// fq, lse [tokens] (either may be null): routergrad::tokenLossTerms of every token. bad_row: the
// first token with a non-finite logit (set to UINT64_MAX beforehand; left there when none).
cudaError_t routerLossTerms(const routergrad::Params& p, const float* logits, const double* f,
                            double* scratch, double* fq, double* lse, unsigned long long* bad_row,
                            cudaStream_t stream);

}  // namespace moecomm::cuda
