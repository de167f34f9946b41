// The CUDA kernels: the same op set as the CPU reference (native/common/kernels.inc),
// on device pointers, queued on mg::cuda::stream() and computing the same thing.
#pragma once

#include <cstdint>

#include "../common/common.h"

namespace mg::cuda {
#include "../common/kernels.inc"
}  // namespace mg::cuda
