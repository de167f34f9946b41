// CPU kernels of the op family "optim": optimizers: AdamW and SGD, global gradient norm and clipping.
#include "kernels.h"

namespace mg::cpu {}  // namespace mg::cpu
