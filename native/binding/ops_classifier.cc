// N-API bindings of the op family "classifier" (CPU addon).
#include "../cpu/kernels.h"
#include "binding.h"

namespace mg::binding {

void register_classifier(Napi::Env env, Napi::Object exports) {}

}  // namespace mg::binding
