// N-API bindings of the op family "attention" (CPU addon).
// Sizes first (B, T, H, d, S, rope), then (handle, element offset) per tensor; a tensor that is absent (no
// memory, or nothing to save) is passed as (null, 0). S = 0 means no memory.
#include "backend_kernels.h"
#include "binding.h"

namespace mg::binding {
namespace {

struct Sizes {
  int64_t B, T, H, d, S;
  bool rope;
  int64_t D() const { return H * d; }
};

Sizes read_sizes(Args& args, const char* op) {
  Sizes s{};
  s.B = args.integer("B");
  s.T = args.integer("T");
  s.H = args.integer("H", 1);
  s.d = args.integer("d", 1);
  s.S = args.integer("S");
  s.rope = args.flag("rope");
  if (s.rope && s.d % 2) fail("%s: rope needs an even head width, got d = %lld", op, (long long)s.d);
  double total = double(s.B) * double(s.T + s.S) * double(3 * s.H * s.d);
  if (total > 9e15) fail("%s: size overflows", op);
  return s;
}

// A float32 tensor argument of `count` elements, or nullptr when the handle is null and the tensor is optional.
float* tensor_arg(Args& args, const char* name, int64_t count, bool required) {
  Napi::Value handle = args.next(name);
  int64_t offset = args.integer(name);
  if (handle.IsNull() || handle.IsUndefined()) {
    if (required) fail("missing tensor '%s'", name);
    return nullptr;
  }
  return static_cast<float*>(storage_ptr(handle, offset * 4, count * 4, name));
}

Napi::Value attentionForward(const Napi::CallbackInfo& info) {
  return guarded(info, "attentionForward", [&] {
    Args args(info, "attentionForward");
    Sizes s = read_sizes(args, "attentionForward");
    const bool mem = s.S > 0;
    const int64_t BT = s.B * s.T, D = s.D();
    const float* qkv = tensor_arg(args, "qkv", BT * 3 * D, true);
    const float* mem_kv = tensor_arg(args, "memKV", s.B * s.S * 2 * D, mem);
    const float* gate = tensor_arg(args, "gateLogits", BT * s.H, mem);
    float* out = tensor_arg(args, "out", BT * D, true);
    float* lse_self = tensor_arg(args, "lseSelf", BT * s.H, true);
    float* lse_mem = tensor_arg(args, "lseMem", BT * s.H, mem);
    float* save_a = tensor_arg(args, "saveA", BT * D, false);
    float* save_r = tensor_arg(args, "saveR", BT * D, false);
    if (!mem && (mem_kv || gate)) fail("attentionForward: memKV and gateLogits need S > 0");
    if (save_a && !save_r && mem) fail("attentionForward: saveA and saveR come together");
    K::attention_forward(s.B, s.T, s.H, s.d, s.S, s.rope, qkv, mem_kv, gate, out, lse_self, lse_mem, save_a,
                               save_r);
    return info.Env().Undefined();
  });
}

Napi::Value attentionBackward(const Napi::CallbackInfo& info) {
  return guarded(info, "attentionBackward", [&] {
    Args args(info, "attentionBackward");
    Sizes s = read_sizes(args, "attentionBackward");
    const bool mem = s.S > 0;
    const int64_t BT = s.B * s.T, D = s.D();
    const float* qkv = tensor_arg(args, "qkv", BT * 3 * D, true);
    const float* mem_kv = tensor_arg(args, "memKV", s.B * s.S * 2 * D, mem);
    const float* gate = tensor_arg(args, "gateLogits", BT * s.H, mem);
    const float* a = tensor_arg(args, "a", BT * D, true);
    const float* r = tensor_arg(args, "r", BT * D, mem);
    const float* lse_self = tensor_arg(args, "lseSelf", BT * s.H, true);
    const float* lse_mem = tensor_arg(args, "lseMem", BT * s.H, mem);
    const float* d_out = tensor_arg(args, "dOut", BT * D, true);
    float* d_qkv = tensor_arg(args, "dQkv", BT * 3 * D, true);
    float* d_mem_kv = tensor_arg(args, "dMemKV", s.B * s.S * 2 * D, mem);
    float* d_gate = tensor_arg(args, "dGateLogits", BT * s.H, mem);
    K::attention_backward(s.B, s.T, s.H, s.d, s.S, s.rope, qkv, mem_kv, gate, a, r, lse_self, lse_mem, d_out,
                                d_qkv, d_mem_kv, d_gate);
    return info.Env().Undefined();
  });
}

}  // namespace

void register_attention(Napi::Env env, Napi::Object exports) {
  exports.Set("attentionForward", Napi::Function::New(env, attentionForward, "attentionForward"));
  exports.Set("attentionBackward", Napi::Function::New(env, attentionBackward, "attentionBackward"));
}

}  // namespace mg::binding
