// The CUDA kernels: the same op set as the CPU reference (native/common/kernels.inc),
// on device pointers, queued on mg::cuda::stream() and computing the same thing.
#pragma once

#include <cstdint>

#include "../common/common.h"

namespace mg::cuda {
#include "../common/kernels.inc"
#include "../common/norm.inc"
#include "../common/linear.inc"
#include "../common/attention.inc"
#include "../common/memwrite.inc"
#include "../common/classifier.inc"
#include "../common/optim.inc"
}  // namespace mg::cuda
