// CPU kernels of the op family "memwrite": the memory write: pointer scores, softmax over tokens, candidates, gated update.
#include "kernels.h"

namespace mg::cpu {}  // namespace mg::cpu
