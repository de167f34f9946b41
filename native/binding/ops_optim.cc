// N-API bindings of the op family "optim" (CPU addon).
#include "../cpu/kernels.h"
#include "binding.h"

namespace mg::binding {

void register_optim(Napi::Env env, Napi::Object exports) {}

}  // namespace mg::binding
