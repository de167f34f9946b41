// CPU kernels of the op family "attention": fused causal self-attention with RoPE, the memory read and its gate.
#include "kernels.h"

namespace mg::cpu {}  // namespace mg::cpu
