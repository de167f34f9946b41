// N-API bindings of the op family "norm" (CPU addon).
#include "../cpu/kernels.h"
#include "binding.h"

namespace mg::binding {

void register_norm(Napi::Env env, Napi::Object exports) {}

}  // namespace mg::binding
