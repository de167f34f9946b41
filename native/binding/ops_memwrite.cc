// N-API bindings of the op family "memwrite" (CPU addon).
#include "../cpu/kernels.h"
#include "binding.h"

namespace mg::binding {

void register_memwrite(Napi::Env env, Napi::Object exports) {}

}  // namespace mg::binding
