// Validation shared by routing, losses and the backward pass.
#pragma once

#include "moecomm/router.hpp"
#include "src/core/status.hpp"

namespace moecomm {

Status validateRouterOptions(const RouterOptions& options);
// Shapes, dtypes and option-dependent limits (the views' metadata only: any device).
Status checkRouterShapes(const RouterOptions& options, const TensorView& logits,
                         const TensorView* bias);
// The shapes, then every logit and bias entry finite (host views).
Status checkRouterInputs(const RouterOptions& options, const TensorView& logits,
                         const TensorView* bias);

}  // namespace moecomm
