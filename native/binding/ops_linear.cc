// N-API bindings of the op family "linear" (CPU addon): argument checks, no math.
#include "backend_kernels.h"
#include "binding.h"

namespace mg::binding {
namespace {

int activation_code(Args& args, const char* op) {
  int64_t code = args.integer("activation");
  if (code > 1) fail("%s: unknown activation code %lld (0 none, 1 gelu)", op, (long long)code);
  return int(code);
}

// (dtype, m, n, k, activation, hasBias, wantZ, x, xOff, w, wOff, bias, biasOff, z, zOff, y, yOff)
Napi::Value linear_forward(const Napi::CallbackInfo& info) {
  return guarded(info, "linearForward", [&] {
    const char* op = "linearForward";
    Args args(info, op);
    DType dt = args.dtype("dtype");
    int64_t m = args.integer("m"), n = args.integer("n"), k = args.integer("k");
    int activation = activation_code(args, op);
    bool has_bias = args.flag("hasBias"), want_z = args.flag("wantZ");
    if (dt == DType::I32) fail("%s: dtype int32 is not supported (float32 or bfloat16)", op);
    const void* x = args.tensor("x", dt, checked_mul(m, k, op));
    const void* w = args.tensor("weight", dt, checked_mul(n, k, op));
    const void* bias = args.optional_tensor("bias", has_bias, dt, n);
    void* z = args.optional_tensor("z", want_z, dt, checked_mul(m, n, op));
    void* y = args.tensor("y", dt, checked_mul(m, n, op));
    K::linear_forward(dt, x, w, bias, z, y, m, n, k, activation);
    return info.Env().Undefined();
  });
}

// (dtype, m, n, k, activation, wantDx, wantDw, wantDb, x, w, z, dy, dz, dx, dw, db), each tensor as (handle, offset);
// z and dz are read only for GELU (pass null otherwise).
Napi::Value linear_backward(const Napi::CallbackInfo& info) {
  return guarded(info, "linearBackward", [&] {
    const char* op = "linearBackward";
    Args args(info, op);
    DType dt = args.dtype("dtype");
    int64_t m = args.integer("m"), n = args.integer("n"), k = args.integer("k");
    int activation = activation_code(args, op);
    bool want_dx = args.flag("wantDx"), want_dw = args.flag("wantDw"), want_db = args.flag("wantDb");
    if (dt == DType::I32) fail("%s: dtype int32 is not supported (float32 or bfloat16)", op);
    int64_t mn = checked_mul(m, n, op), mk = checked_mul(m, k, op), nk = checked_mul(n, k, op);
    bool gelu = activation == 1;
    const void* x = args.tensor("x", dt, mk);
    const void* w = args.tensor("weight", dt, nk);
    const void* z = args.optional_tensor("z", gelu, dt, mn);
    const void* dy = args.tensor("dy", dt, mn);
    void* dz = args.optional_tensor("dz", gelu, dt, mn);
    void* dx = args.optional_tensor("dx", want_dx, dt, mk);
    void* dw = args.optional_tensor("dw", want_dw, dt, nk);
    void* db = args.optional_tensor("db", want_db, dt, n);
    K::linear_backward(dt, x, w, z, dy, dz, dx, dw, db, m, n, k, activation);
    return info.Env().Undefined();
  });
}

}  // namespace

void register_linear(Napi::Env env, Napi::Object exports) {
  exports.Set("linearForward", Napi::Function::New(env, linear_forward, "linearForward"));
  exports.Set("linearBackward", Napi::Function::New(env, linear_backward, "linearBackward"));
}

}  // namespace mg::binding
