// N-API bindings of the op family "attention" (CPU addon).
#include "../cpu/kernels.h"
#include "binding.h"

namespace mg::binding {

void register_attention(Napi::Env env, Napi::Object exports) {}

}  // namespace mg::binding
