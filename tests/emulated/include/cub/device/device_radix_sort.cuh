// The emulated GPU tests' stand-in for CUB's device_radix_sort.
#pragma once
#include "cub/host_algorithms.hpp"
