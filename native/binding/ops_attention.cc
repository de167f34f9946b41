// N-API bindings of the op family "attention" (shared by the CPU and CUDA addons): argument checks, no math.
// attentionDecode takes the new rows qkv [B, 3D], the positions [B] (int32), the key and value caches and the memory
// as attentionDecodeMemory made it.
// The dtype code first (float32 or bfloat16: every tensor but the logsumexps, which are float32), then the sizes
// (B, T, H, d, S, rope, memory read mode), then (handle, element offset) per tensor; a tensor that is absent (no memory, or nothing
// to save) is passed as (null, 0). S = 0 means no memory.
#include "backend_kernels.h"
#include "binding.h"

namespace mg::binding {
namespace {

struct Sizes {
  int64_t B, T, H, d, S;
  bool rope;
  int mem_mode;
  int64_t D() const { return H * d; }
};

DType float_dtype(Args& args, const char* op) {
  DType dt = args.dtype("dtype");
  if (dt == DType::I32) fail("%s: dtype int32 is not supported (float32 or bfloat16)", op);
  return dt;
}

Sizes read_sizes(Args& args, const char* op) {
  Sizes s{};
  s.B = args.integer("B");
  s.T = args.integer("T");
  s.H = args.integer("H", 1);
  s.d = args.integer("d", 1);
  s.S = args.integer("S");
  s.rope = args.flag("rope");
  s.mem_mode = int(args.integer("memMode"));
  if (s.mem_mode & ~(K::kMemJoint | K::kMemPositions)) fail("%s: unknown memory read mode %d", op, s.mem_mode);
  if (s.rope && s.d % 2) fail("%s: rope needs an even head width, got d = %lld", op, (long long)s.d);
  double total = double(s.B) * double(s.T + s.S) * double(3 * s.H * s.d);
  if (total > 9e15) fail("%s: size overflows", op);
  return s;
}

// A tensor argument of `count` elements of dt, or nullptr when the handle is null and the tensor is optional.
void* tensor_arg(Args& args, const char* name, DType dt, int64_t count, bool required) {
  Napi::Value handle = args.next(name);
  int64_t offset = args.integer(name);
  if (handle.IsNull() || handle.IsUndefined()) {
    if (required) fail("missing tensor '%s'", name);
    return nullptr;
  }
  const int64_t size = int64_t(dtype_size(dt));
  return storage_ptr(handle, offset * size, count * size, name);
}

// A float32 tensor argument (the logsumexps, float32 whatever dt is).
float* f32_arg(Args& args, const char* name, int64_t count, bool required) {
  return static_cast<float*>(tensor_arg(args, name, DType::F32, count, required));
}

Napi::Value attentionForward(const Napi::CallbackInfo& info) {
  return guarded(info, "attentionForward", [&] {
    Args args(info, "attentionForward");
    const DType dt = float_dtype(args, "attentionForward");
    Sizes s = read_sizes(args, "attentionForward");
    const bool mem = s.S > 0;
    const int64_t BT = s.B * s.T, D = s.D();
    const void* qkv = tensor_arg(args, "qkv", dt, BT * 3 * D, true);
    const void* mem_kv = tensor_arg(args, "memKV", dt, s.B * s.S * 2 * D, mem);
    const void* gate = tensor_arg(args, "gateLogits", dt, BT * s.H, mem);
    void* out = tensor_arg(args, "out", dt, BT * D, true);
    float* lse_self = f32_arg(args, "lseSelf", BT * s.H, true);
    float* lse_mem = f32_arg(args, "lseMem", BT * s.H, mem);
    void* save_a = tensor_arg(args, "saveA", dt, BT * D, false);
    void* save_r = tensor_arg(args, "saveR", dt, BT * D, false);
    if (!mem && (mem_kv || gate)) fail("attentionForward: memKV and gateLogits need S > 0");
    if (save_a && !save_r && mem) fail("attentionForward: saveA and saveR come together");
    K::attention_forward(dt, s.B, s.T, s.H, s.d, s.S, s.rope, s.mem_mode, qkv, mem_kv, gate, out, lse_self, lse_mem, save_a,
                         save_r);
    return info.Env().Undefined();
  });
}

Napi::Value attentionBackward(const Napi::CallbackInfo& info) {
  return guarded(info, "attentionBackward", [&] {
    Args args(info, "attentionBackward");
    const DType dt = float_dtype(args, "attentionBackward");
    Sizes s = read_sizes(args, "attentionBackward");
    const bool mem = s.S > 0;
    const int64_t BT = s.B * s.T, D = s.D();
    const void* qkv = tensor_arg(args, "qkv", dt, BT * 3 * D, true);
    const void* mem_kv = tensor_arg(args, "memKV", dt, s.B * s.S * 2 * D, mem);
    const void* gate = tensor_arg(args, "gateLogits", dt, BT * s.H, mem);
    const void* a = tensor_arg(args, "a", dt, BT * D, true);
    const void* r = tensor_arg(args, "r", dt, BT * D, mem);
    const float* lse_self = f32_arg(args, "lseSelf", BT * s.H, true);
    const float* lse_mem = f32_arg(args, "lseMem", BT * s.H, mem);
    const void* d_out = tensor_arg(args, "dOut", dt, BT * D, true);
    void* d_qkv = tensor_arg(args, "dQkv", dt, BT * 3 * D, true);
    void* d_mem_kv = tensor_arg(args, "dMemKV", dt, s.B * s.S * 2 * D, mem);
    void* d_gate = tensor_arg(args, "dGateLogits", dt, BT * s.H, mem);
    K::attention_backward(dt, s.B, s.T, s.H, s.d, s.S, s.rope, s.mem_mode, qkv, mem_kv, gate, a, r, lse_self, lse_mem, d_out,
                          d_qkv, d_mem_kv, d_gate);
    return info.Env().Undefined();
  });
}

// Elements of a blocked key cache (attention.inc) of n keys for B sequences of H heads of width d.
int64_t blocked_keys(int64_t B, int64_t H, int64_t d, int64_t n) {
  return B * H * ((n + K::kDecodeKeyBlock - 1) / K::kDecodeKeyBlock) * d * K::kDecodeKeyBlock;
}

Napi::Value attentionDecode(const Napi::CallbackInfo& info) {
  return guarded(info, "attentionDecode", [&] {
    Args args(info, "attentionDecode");
    const DType dt = float_dtype(args, "attentionDecode");
    Sizes s = read_sizes(args, "attentionDecode");
    if (s.T < 1) fail("attentionDecode: the cache needs T >= 1 rows");
    const bool mem = s.S > 0;
    const int64_t D = s.D();
    const void* qkv = tensor_arg(args, "qkv", dt, s.B * 3 * D, true);
    const auto* positions = static_cast<const int32_t*>(tensor_arg(args, "positions", DType::I32, s.B, true));
    float* keys = f32_arg(args, "keys", blocked_keys(s.B, s.H, s.d, s.T), true);
    void* values = tensor_arg(args, "values", dt, s.B * s.T * D, true);
    const float* mem_keys = f32_arg(args, "memKeys", blocked_keys(s.B, s.H, s.d, s.S), mem);
    const void* mem_values = tensor_arg(args, "memValues", dt, s.B * s.S * D, mem);
    const void* gate = tensor_arg(args, "gateLogits", dt, s.B * s.H, mem);
    void* out = tensor_arg(args, "out", dt, s.B * D, true);
    if (!mem && (mem_keys || mem_values || gate)) fail("attentionDecode: the memory and gateLogits need S > 0");
    K::attention_decode(dt, s.B, s.T, s.H, s.d, s.S, s.rope, s.mem_mode, qkv, positions, keys, values, mem_keys, mem_values,
                        gate, out);
    return info.Env().Undefined();
  });
}

// attentionDecodeMemory(dtype, B, S, H, d, rope, memMode, memKV, memKeys, memValues): decoding's view of a memory.
Napi::Value attentionDecodeMemory(const Napi::CallbackInfo& info) {
  return guarded(info, "attentionDecodeMemory", [&] {
    Args args(info, "attentionDecodeMemory");
    const DType dt = float_dtype(args, "attentionDecodeMemory");
    const int64_t B = args.integer("B"), S = args.integer("S", 1), H = args.integer("H", 1), d = args.integer("d", 1);
    const bool rope = args.flag("rope");
    const int mem_mode = int(args.integer("memMode"));
    if (mem_mode & ~(K::kMemJoint | K::kMemPositions)) fail("attentionDecodeMemory: unknown memory read mode %d", mem_mode);
    if (rope && d % 2) fail("attentionDecodeMemory: rope needs an even head width, got d = %lld", (long long)d);
    if (double(B) * double(S) * double(2 * H * d) > 9e15) fail("attentionDecodeMemory: size overflows");
    const void* mem_kv = tensor_arg(args, "memKV", dt, B * S * 2 * H * d, true);
    float* mem_keys = f32_arg(args, "memKeys", blocked_keys(B, H, d, S), true);
    void* mem_values = tensor_arg(args, "memValues", dt, B * S * H * d, true);
    K::attention_decode_memory(dt, B, S, H, d, rope, mem_mode, mem_kv, mem_keys, mem_values);
    return info.Env().Undefined();
  });
}

}  // namespace

void register_attention(Napi::Env env, Napi::Object exports) {
  exports.Set("attentionDecode", Napi::Function::New(env, attentionDecode, "attentionDecode"));
  exports.Set("attentionDecodeMemory", Napi::Function::New(env, attentionDecodeMemory, "attentionDecodeMemory"));
  exports.Set("attentionForward", Napi::Function::New(env, attentionForward, "attentionForward"));
  exports.Set("attentionBackward", Napi::Function::New(env, attentionBackward, "attentionBackward"));
}

}  // namespace mg::binding
