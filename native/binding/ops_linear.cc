// N-API bindings of the op family "linear" (CPU addon).
#include "../cpu/kernels.h"
#include "binding.h"

namespace mg::binding {

void register_linear(Napi::Env env, Napi::Object exports) {}

}  // namespace mg::binding
