// The emulated GPU tests' stand-in for CUB's device_histogram.
#pragma once
#include "cub/host_algorithms.hpp"
