// The emulated GPU tests' stand-in for the CUDA runtime header: the API declarations, and the
// device builtins of cuda_emulation.hpp.
#pragma once
#include "tests/emulated/cuda_emulation.hpp"
