// CPU kernels of the op family "norm": layer norm, embedding and positions (RoPE, sinusoidal).
#include "kernels.h"

namespace mg::cpu {}  // namespace mg::cpu
