// Validation shared by routing, losses and the backward pass.
#pragma once

#include "moecomm/router.hpp"
#include "src/core/status.hpp"

namespace moecomm {

Status validateRouterOptions(const RouterOptions& options);
Status checkRouterInputs(const RouterOptions& options, const TensorView& logits,
                         const TensorView* bias);

}  // namespace moecomm
