// Host storage for the CPU addon: 64-byte-aligned blocks from the caching
// allocator, handed to JS as external ArrayBuffers (so JS reads them without
// a copy). `free` returns the block to the cache at once and detaches the
// ArrayBuffer, so a stale view reads as empty instead of touching freed memory.
// The ArrayBuffer's finalizer is only the safety net for tensors never disposed.
#include <cstdlib>
#include <mutex>
#include <unordered_map>

#include "../common/allocator.h"
#include "binding.h"

namespace mg::binding {
namespace {

void* raw_host_alloc(size_t bytes) { return std::aligned_alloc(64, (bytes + 63) / 64 * 64); }
void raw_host_free(void* p) { std::free(p); }

CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator(raw_host_alloc, raw_host_free);  // never destroyed: finalizers may run at exit
  return *a;
}

struct HostBlock {
  void* ptr;
  bool live;
};

std::mutex blocks_mu;
std::unordered_map<void*, HostBlock*> live_blocks;  // by address: how `free` finds the block of an ArrayBuffer

void release(HostBlock* block) {
  {
    std::lock_guard<std::mutex> lock(blocks_mu);
    if (!block->live) return;
    block->live = false;
    live_blocks.erase(block->ptr);
  }
  allocator().deallocate(block->ptr);
}

Napi::Value alloc(const Napi::CallbackInfo& info) {
  return guarded(info, "alloc", [&]() -> Napi::Value {
    Args args(info, "alloc");
    int64_t bytes = args.integer("bytes");
    void* ptr = allocator().allocate(size_t(bytes));
    if (!ptr) fail("alloc: out of host memory allocating %lld bytes", (long long)bytes);
    auto* block = new HostBlock{ptr, true};
    {
      std::lock_guard<std::mutex> lock(blocks_mu);
      live_blocks[ptr] = block;
    }
    // An empty tensor still gets a one-byte view: a zero-length ArrayBuffer cannot be told from a detached one.
    size_t visible = bytes == 0 ? 1 : size_t(bytes);
    return Napi::ArrayBuffer::New(info.Env(), ptr, visible, [](Napi::Env, void*, HostBlock* b) {
      release(b);
      delete b;
    }, block);
  });
}

Napi::Value free_(const Napi::CallbackInfo& info) {
  return guarded(info, "free", [&]() -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsArrayBuffer()) fail("free: expected a storage handle");
    Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
    HostBlock* block = nullptr;
    {
      std::lock_guard<std::mutex> lock(blocks_mu);
      auto it = live_blocks.find(ab.Data());
      if (ab.ByteLength() > 0 && it != live_blocks.end()) block = it->second;
    }
    if (!block) fail("free: storage was already freed or is not from this addon");
    release(block);
    ab.Detach();
    return info.Env().Undefined();
  });
}

Napi::Value memory(const Napi::CallbackInfo& info) {
  return stats_object(info.Env(), allocator().stats());
}

Napi::Value reset_peak(const Napi::CallbackInfo& info) {
  allocator().reset_peak();
  return info.Env().Undefined();
}

Napi::Value empty_cache(const Napi::CallbackInfo& info) {
  allocator().release_cached();
  return info.Env().Undefined();
}

// (handle, byteOffset, hostTypedArray): host array -> storage.
Napi::Value copy_from_host(const Napi::CallbackInfo& info) {
  return guarded(info, "copyFromHost", [&] {
    Args args(info, "copyFromHost");
    Napi::Value handle = args.next("dst");
    int64_t offset = args.integer("byteOffset");
    Napi::Value src = args.next("src");
    if (!src.IsTypedArray()) fail("copyFromHost: src must be a typed array");
    auto ta = src.As<Napi::TypedArray>();
    size_t bytes = ta.ByteLength();
    void* dst = storage_ptr(handle, offset, int64_t(bytes), "dst");
    std::memcpy(dst, static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset(), bytes);
    return info.Env().Undefined();
  });
}

// (handle, byteOffset, hostTypedArray): storage -> host array.
Napi::Value copy_to_host(const Napi::CallbackInfo& info) {
  return guarded(info, "copyToHost", [&] {
    Args args(info, "copyToHost");
    Napi::Value handle = args.next("src");
    int64_t offset = args.integer("byteOffset");
    Napi::Value dst = args.next("dst");
    if (!dst.IsTypedArray()) fail("copyToHost: dst must be a typed array");
    auto ta = dst.As<Napi::TypedArray>();
    size_t bytes = ta.ByteLength();
    const void* src = storage_ptr(handle, offset, int64_t(bytes), "src");
    std::memcpy(static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset(), src, bytes);
    return info.Env().Undefined();
  });
}

// (dst, dstByteOffset, src, srcByteOffset, bytes): within this device.
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
    if (bytes) std::memmove(dst, src, size_t(bytes));
    return info.Env().Undefined();
  });
}

}  // namespace

void* storage_ptr(const Napi::Value& handle, int64_t byte_offset, int64_t bytes, const char* arg) {
  if (!handle.IsArrayBuffer()) fail("tensor '%s' is not a CPU storage handle", arg);
  Napi::ArrayBuffer ab = handle.As<Napi::ArrayBuffer>();
  size_t cap = ab.ByteLength();
  if (cap == 0 && bytes > 0) fail("tensor '%s' was disposed", arg);
  if (byte_offset < 0 || bytes < 0 || uint64_t(byte_offset) + uint64_t(bytes) > cap)
    fail("tensor '%s' needs bytes [%lld, %lld) but its storage has %zu", arg, (long long)byte_offset,
         (long long)(byte_offset + bytes), cap);
  return static_cast<uint8_t*>(ab.Data()) + byte_offset;
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
}

}  // namespace mg::binding
