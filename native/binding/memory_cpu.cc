// Host storage for the CPU addon: 64-byte-aligned blocks from the caching
// allocator, handed to JS as external ArrayBuffers (so JS reads them without
// a copy). `free` returns the block to the cache at once and detaches the
// ArrayBuffer, so a stale view reads as empty instead of touching freed memory.
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

// Live blocks by address, with the size asked for: how `free` recognises a handle of this addon.
std::mutex blocks_mu;
std::unordered_map<void*, size_t> live_blocks;

Napi::Value alloc(const Napi::CallbackInfo& info) {
  return guarded(info, "alloc", [&]() -> Napi::Value {
    Args args(info, "alloc");
    int64_t bytes = args.integer("bytes");
    void* ptr = allocator().allocate(size_t(bytes));
    if (!ptr) fail("alloc: out of host memory allocating %lld bytes", (long long)bytes);
    {
      std::lock_guard<std::mutex> lock(blocks_mu);
      live_blocks[ptr] = size_t(bytes);
    }
    // No native finalizer: Node runs those on the event loop, so a synchronous training loop would
    // pile up one per allocation. Tensors free their storage explicitly, with lib/tensor.ts's
    // FinalizationRegistry as the safety net. An empty tensor still gets a one-byte view, since a
    // zero-length ArrayBuffer cannot be told from a detached one.
    return Napi::ArrayBuffer::New(info.Env(), ptr, bytes == 0 ? 1 : size_t(bytes));
  });
}

Napi::Value free_(const Napi::CallbackInfo& info) {
  return guarded(info, "free", [&]() -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsArrayBuffer()) fail("free: expected a storage handle");
    Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
    void* ptr = ab.ByteLength() > 0 ? ab.Data() : nullptr;
    {
      std::lock_guard<std::mutex> lock(blocks_mu);
      if (!ptr || live_blocks.erase(ptr) == 0) fail("free: storage was already freed or is not from this addon");
    }
    allocator().deallocate(ptr);
    ab.Detach();  // a stale view now reads as empty instead of touching a reused block
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

void register_handles(Napi::Env env, Napi::Object exports) {
  exports.Set("alloc", Napi::Function::New(env, alloc, "alloc"));
  exports.Set("free", Napi::Function::New(env, free_, "free"));
}

CachingAllocator& storage_allocator() { return allocator(); }
void copy_host_to_storage(void* dst, const void* host_src, size_t bytes) { std::memcpy(dst, host_src, bytes); }
void copy_storage_to_host(void* host_dst, const void* src, size_t bytes) { std::memcpy(host_dst, src, bytes); }
void copy_within_storage(void* dst, const void* src, size_t bytes) { std::memmove(dst, src, bytes); }

}  // namespace mg::binding
