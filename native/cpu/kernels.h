// The CPU kernels: the reference implementation of every op, and the fast
// fallback when no GPU is used.
#pragma once

#include <cstdint>

#include "../common/common.h"

namespace mg::cpu {
#include "../common/kernels.inc"
}  // namespace mg::cpu
