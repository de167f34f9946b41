// The memory functions both addons export, written once: stats, peak and
// cache control, and the three copies. Each addon supplies its storage
// handles (alloc, free, storage_ptr) and the raw copy primitives
// (memory_cpu.cc, memory_cuda.cc).
#include "binding.h"

namespace mg::binding {
namespace {

Napi::Value memory(const Napi::CallbackInfo& info) { return stats_object(info.Env(), storage_allocator().stats()); }

Napi::Value reset_peak(const Napi::CallbackInfo& info) {
  storage_allocator().reset_peak();
  return info.Env().Undefined();
}

Napi::Value empty_cache(const Napi::CallbackInfo& info) {
  storage_allocator().release_cached();
  return info.Env().Undefined();
}

// The bytes of a host typed array argument.
uint8_t* host_bytes(Args& args, const char* op, const char* name, size_t* bytes) {
  Napi::Value v = args.next(name);
  if (!v.IsTypedArray()) fail("%s: %s must be a typed array", op, name);
  auto ta = v.As<Napi::TypedArray>();
  *bytes = ta.ByteLength();
  return static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
}

// (handle, byteOffset, hostTypedArray): host array -> storage; complete on return.
Napi::Value copy_from_host(const Napi::CallbackInfo& info) {
  return guarded(info, "copyFromHost", [&] {
    Args args(info, "copyFromHost");
    Napi::Value handle = args.next("dst");
    int64_t offset = args.integer("byteOffset");
    size_t bytes;
    const uint8_t* src = host_bytes(args, "copyFromHost", "src", &bytes);
    void* dst = storage_ptr(handle, offset, int64_t(bytes), "dst");
    if (bytes) copy_host_to_storage(dst, src, bytes);
    return info.Env().Undefined();
  });
}

// (handle, byteOffset, hostTypedArray): storage -> host array; complete on return.
Napi::Value copy_to_host(const Napi::CallbackInfo& info) {
  return guarded(info, "copyToHost", [&] {
    Args args(info, "copyToHost");
    Napi::Value handle = args.next("src");
    int64_t offset = args.integer("byteOffset");
    size_t bytes;
    uint8_t* dst = host_bytes(args, "copyToHost", "dst", &bytes);
    const void* src = storage_ptr(handle, offset, int64_t(bytes), "src");
    if (bytes) copy_storage_to_host(dst, src, bytes);
    return info.Env().Undefined();
  });
}

// (dst, dstByteOffset, src, srcByteOffset, bytes): within this device, overlapping ranges like memmove.
Napi::Value copy(const Napi::CallbackInfo& info) {
  return guarded(info, "copy", [&] {
    Args args(info, "copy");
    Napi::Value dst_h = args.next("dst");
    int64_t dst_off = args.integer("dstByteOffset");
    Napi::Value src_h = args.next("src");
    int64_t src_off = args.integer("srcByteOffset");
    int64_t bytes = args.integer("bytes");
    void* dst = storage_ptr(dst_h, dst_off, bytes, "dst");
    const void* src = storage_ptr(src_h, src_off, bytes, "src");
    if (bytes && dst != src) copy_within_storage(dst, src, size_t(bytes));
    return info.Env().Undefined();
  });
}

}  // namespace

void register_memory(Napi::Env env, Napi::Object exports) {
  register_handles(env, exports);
  exports.Set("memory", Napi::Function::New(env, memory, "memory"));
  exports.Set("resetPeak", Napi::Function::New(env, reset_peak, "resetPeak"));
  exports.Set("emptyCache", Napi::Function::New(env, empty_cache, "emptyCache"));
  exports.Set("copyFromHost", Napi::Function::New(env, copy_from_host, "copyFromHost"));
  exports.Set("copyToHost", Napi::Function::New(env, copy_to_host, "copyToHost"));
  exports.Set("copy", Napi::Function::New(env, copy, "copy"));
}

}  // namespace mg::binding
