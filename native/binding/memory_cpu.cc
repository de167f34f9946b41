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
