// Small group collectives over the exchange engine (for statistics, not payloads).
#pragma once

#include <cstdint>
#include <vector>

#include "src/group/group_impl.hpp"

namespace moecomm {

// Element-wise sum over every rank; every rank must pass the same length.
Status allReduceSum(Group::Impl& group, std::vector<int64_t>& values);

}  // namespace moecomm
