// CPU kernels of the op family "linear": linear layers: GEMM with fused bias and GELU epilogues.
#include "kernels.h"

namespace mg::cpu {}  // namespace mg::cpu
