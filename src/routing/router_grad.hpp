// Router::losses and Router::backward beyond their API: the per-token parameters, the sum of the
// per-token loss terms (one order for both devices), and the GPU path.
#pragma once

#include <vector>

#include "kernels/common/router_grad.hpp"
#include "moecomm/router.hpp"
#include "src/core/status.hpp"

namespace moecomm {

routergrad::Params routerGradParams(const RouterOptions& o, int64_t tokens, int experts,
                                    const RouterLossOptions& lo);

// The losses from each token's <f, q> (fq, empty without aux loss) and logsumexp (lse, empty
// without z loss), summed in token order.
RouterLosses sumLosses(const routergrad::Params& p, const std::vector<double>& fq,
                       const std::vector<double>& lse);

// Whether every given view (null ones skipped) is on one GPU, the one of the first.
bool allOnOneGpu(std::initializer_list<const TensorView*> views);

// With every tensor on the logits' GPU, the shapes already checked: the per-token kernels on the
// context's stream. losses waits for its per-token terms (they sum on the host) and raises a
// non-finite logit as the host path does; backward does not wait and does not look for
// non-finite logits (route() did), whose rows get non-finite gradients.
Status lossesOnDevice(const routergrad::Params& p, const TensorView& logits, const Routing& routing,
                      const std::vector<int64_t>* global, ExecContext context, RouterLosses* out);
Status backwardOnDevice(const routergrad::Params& p, const TensorView& logits,
                        const Routing& routing, const TensorView* grad_weights,
                        const std::vector<int64_t>* global, const TensorView& grad_logits,
                        ExecContext context);

}  // namespace moecomm
