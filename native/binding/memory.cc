// The memory functions both addons export, written once: storage handles
// (alloc, free, storage_ptr, address), stats, peak and cache control, and the three
// copies. Each addon supplies its allocator and raw copy primitives
// (memory_cpu.cc, memory_cuda.cc).
#include <mutex>
#include <unordered_map>

#include "binding.h"

namespace mg::binding {
namespace {

// A handle is a type-tagged external carrying only a block id, never a pointer: a handle used after
// `free` finds no block (a clear error) instead of reading freed memory. Handles have no native
// finalizer and no ArrayBuffer: Node runs finalizers, and V8 reclaims external ArrayBuffers, only in
// work queued on the event loop, so a synchronous training loop would pile up one per allocation.
// Tensors free their storage explicitly, with lib/core/tensor.ts's FinalizationRegistry as the safety net.
struct Block {
  void* ptr;
  size_t bytes;  // as asked for: the bounds that storage_ptr checks
};
std::mutex blocks_mu;
std::unordered_map<uint64_t, Block> live_blocks;
uint64_t next_block_id = 1;

// The id in a handle of this addon, or 0 for anything else.
uint64_t block_id(const Napi::Value& handle) {
  if (!handle.IsExternal()) return 0;
  auto ext = handle.As<Napi::External<void>>();
  if (!ext.CheckTypeTag(&storage_tag())) return 0;
  return uint64_t(reinterpret_cast<uintptr_t>(ext.Data()));
}

Napi::Value alloc(const Napi::CallbackInfo& info) {
  return guarded(info, "alloc", [&]() -> Napi::Value {
    Args args(info, "alloc");
    int64_t bytes = args.integer("bytes");
    void* ptr = storage_allocator().allocate(size_t(bytes));
    if (!ptr) out_of_memory(bytes);
    uint64_t id;
    {
      std::lock_guard<std::mutex> lock(blocks_mu);
      id = next_block_id++;
      live_blocks[id] = Block{ptr, size_t(bytes)};
    }
    try {
      auto handle = Napi::External<void>::New(info.Env(), reinterpret_cast<void*>(uintptr_t(id)));
      handle.TypeTag(&storage_tag());
      return handle;
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(blocks_mu);
        live_blocks.erase(id);
      }
      storage_allocator().deallocate(ptr);
      throw;
    }
  });
}

Napi::Value free_(const Napi::CallbackInfo& info) {
  return guarded(info, "free", [&]() -> Napi::Value {
    uint64_t id = info.Length() < 1 ? 0 : block_id(info[0]);
    if (!id) fail("free: expected a %s storage handle", storage_kind());
    void* ptr;
    {
      std::lock_guard<std::mutex> lock(blocks_mu);
      auto it = live_blocks.find(id);
      if (it == live_blocks.end()) fail("free: storage was already freed");
      ptr = it->second.ptr;
      live_blocks.erase(it);
    }
    storage_allocator().deallocate(ptr);
    return info.Env().Undefined();
  });
}

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

// (handle, byteOffset, bytes): the address of those bytes of the storage, as a BigInt, for an engine that works on
// this device's memory in place (data parallel's collectives on gradient buckets). Valid while the storage lives.
Napi::Value address(const Napi::CallbackInfo& info) {
  return guarded(info, "address", [&]() -> Napi::Value {
    Args args(info, "address");
    Napi::Value handle = args.next("storage");
    int64_t offset = args.integer("byteOffset");
    int64_t bytes = args.integer("bytes");
    void* ptr = storage_ptr(handle, offset, bytes, "storage");
    return Napi::BigInt::New(info.Env(), uint64_t(reinterpret_cast<uintptr_t>(ptr)));
  });
}

}  // namespace

void* storage_ptr(const Napi::Value& handle, int64_t byte_offset, int64_t bytes, const char* arg) {
  uint64_t id = block_id(handle);
  if (!id) fail("tensor '%s' is not a %s storage handle", arg, storage_kind());
  Block block{nullptr, 0};
  {
    std::lock_guard<std::mutex> lock(blocks_mu);
    auto it = live_blocks.find(id);
    if (it != live_blocks.end()) block = it->second;
  }
  if (!block.ptr && bytes > 0) fail("tensor '%s' was disposed", arg);
  if (byte_offset < 0 || bytes < 0 || uint64_t(byte_offset) + uint64_t(bytes) > block.bytes)
    fail("tensor '%s' needs bytes [%lld, %lld) but its storage has %zu", arg, (long long)byte_offset,
         (long long)(byte_offset + bytes), block.bytes);
  return block.ptr ? static_cast<uint8_t*>(block.ptr) + byte_offset : nullptr;
}

void register_memory(Napi::Env env, Napi::Object exports) {
  exports.Set("alloc", Napi::Function::New(env, alloc, "alloc"));
  exports.Set("free", Napi::Function::New(env, free_, "free"));
  exports.Set("memory", Napi::Function::New(env, memory, "memory"));
  exports.Set("resetPeak", Napi::Function::New(env, reset_peak, "resetPeak"));
  exports.Set("emptyCache", Napi::Function::New(env, empty_cache, "emptyCache"));
  exports.Set("copyFromHost", Napi::Function::New(env, copy_from_host, "copyFromHost"));
  exports.Set("copyToHost", Napi::Function::New(env, copy_to_host, "copyToHost"));
  exports.Set("copy", Napi::Function::New(env, copy, "copy"));
  exports.Set("address", Napi::Function::New(env, address, "address"));
}

}  // namespace mg::binding
