// Validation of caller-supplied views, with messages that name the argument, what it was and what
// was expected.
#pragma once

#include <initializer_list>
#include <string>

#include "moecomm/types.hpp"
#include "src/core/status.hpp"

namespace moecomm {

// "cpu" or "cuda:N", as TensorView::describe writes a device.
std::string deviceName(Device device);

// A 2-D cpu view [rows, cols] of one of `dtypes`; rows < 0 or cols < 0 means "any". Data may be
// null only when the view is empty. With any_device, a CUDA view passes too.
Status checkMatrix(const char* name, const TensorView& view, int64_t rows, int64_t cols,
                   std::initializer_list<DType> dtypes, bool any_device = false);

}  // namespace moecomm
