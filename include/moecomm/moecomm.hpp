// moecomm: Mixture-of-Experts expert-parallel communication. The whole C++ API.
#pragma once

#include "moecomm/allocator.hpp"
#include "moecomm/dispatch.hpp"
#include "moecomm/error.hpp"
#include "moecomm/experts.hpp"
#include "moecomm/group.hpp"
#include "moecomm/moe_layer.hpp"
#include "moecomm/quant.hpp"
#include "moecomm/router.hpp"
#include "moecomm/types.hpp"
#include "moecomm/version.h"
