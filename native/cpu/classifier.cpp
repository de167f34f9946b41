// CPU kernels of the op family "classifier": the output head: tied logits, cross-entropy and the copy mixture, fused.
#include "kernels.h"

namespace mg::cpu {}  // namespace mg::cpu
