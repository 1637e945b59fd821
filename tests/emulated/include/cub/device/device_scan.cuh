// The emulated GPU tests' stand-in for CUB's device_scan.
#pragma once
#include "cub/host_algorithms.hpp"
