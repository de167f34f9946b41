// The CPU kernels: the reference implementation of every op, and the fast
// fallback when no GPU is used.
#pragma once

#include <cstdint>

#include "../common/common.h"

namespace mg::cpu {
#include "../common/kernels.inc"
#include "../common/norm.inc"
#include "../common/linear.inc"
#include "../common/attention.inc"
#include "../common/memwrite.inc"
#include "../common/classifier.inc"
#include "../common/optim.inc"
}  // namespace mg::cpu
