// Host storage for the CPU addon: 64-byte-aligned blocks from the caching
// allocator, handed to JS as opaque type-tagged handles (JS reads and writes
// them through copyToHost/copyFromHost). `free` returns the block to the cache at once.
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
  static CachingAllocator* a = new CachingAllocator(raw_host_alloc, raw_host_free);  // never destroyed: used until exit
  return *a;
}

// Identifies externals made by this addon ("memgpt-cpu-block").
const napi_type_tag kHostBlockTag = {0x6d656d6770742d63ULL, 0x70752d626c6f636bULL};

// A handle carries only a block id, never a pointer: a handle used after `free` finds no block (a
// clear error) instead of reading freed memory. Handles are plain externals with no finalizer and
// no ArrayBuffer: Node runs native finalizers, and V8 reclaims external ArrayBuffers, only in work
// queued on the event loop, so a synchronous training loop would pile up one per allocation.
// Tensors free their storage explicitly, with lib/tensor.ts's FinalizationRegistry as the safety net.
struct HostBlock {
  void* ptr;
  size_t bytes;  // as asked for: the bounds that storage_ptr checks
};
std::mutex blocks_mu;
std::unordered_map<uint64_t, HostBlock> live_blocks;
uint64_t next_block_id = 1;

uint64_t block_id(const Napi::Value& handle) {
  if (!handle.IsExternal()) return 0;
  auto ext = handle.As<Napi::External<void>>();
  if (!ext.CheckTypeTag(&kHostBlockTag)) return 0;
  return uint64_t(reinterpret_cast<uintptr_t>(ext.Data()));
}

Napi::Value alloc(const Napi::CallbackInfo& info) {
  return guarded(info, "alloc", [&]() -> Napi::Value {
    Args args(info, "alloc");
    int64_t bytes = args.integer("bytes");
    void* ptr = allocator().allocate(size_t(bytes));
    if (!ptr) fail("alloc: out of host memory allocating %lld bytes", (long long)bytes);
    uint64_t id;
    {
      std::lock_guard<std::mutex> lock(blocks_mu);
      id = next_block_id++;
      live_blocks[id] = HostBlock{ptr, size_t(bytes)};
    }
    try {
      auto handle = Napi::External<void>::New(info.Env(), reinterpret_cast<void*>(uintptr_t(id)));
      handle.TypeTag(&kHostBlockTag);
      return handle;
    } catch (...) {
      std::lock_guard<std::mutex> lock(blocks_mu);
      live_blocks.erase(id);
      allocator().deallocate(ptr);
      throw;
    }
  });
}

Napi::Value free_(const Napi::CallbackInfo& info) {
  return guarded(info, "free", [&]() -> Napi::Value {
    uint64_t id = info.Length() < 1 ? 0 : block_id(info[0]);
    if (!id) fail("free: expected a CPU storage handle");
    void* ptr;
    {
      std::lock_guard<std::mutex> lock(blocks_mu);
      auto it = live_blocks.find(id);
      if (it == live_blocks.end()) fail("free: storage was already freed");
      ptr = it->second.ptr;
      live_blocks.erase(it);
    }
    allocator().deallocate(ptr);
    return info.Env().Undefined();
  });
}

}  // namespace

void* storage_ptr(const Napi::Value& handle, int64_t byte_offset, int64_t bytes, const char* arg) {
  uint64_t id = block_id(handle);
  if (!id) fail("tensor '%s' is not a CPU storage handle", arg);
  HostBlock block{nullptr, 0};
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

void register_handles(Napi::Env env, Napi::Object exports) {
  exports.Set("alloc", Napi::Function::New(env, alloc, "alloc"));
  exports.Set("free", Napi::Function::New(env, free_, "free"));
}

CachingAllocator& storage_allocator() { return allocator(); }
void copy_host_to_storage(void* dst, const void* host_src, size_t bytes) { std::memcpy(dst, host_src, bytes); }
void copy_storage_to_host(void* host_dst, const void* src, size_t bytes) { std::memcpy(host_dst, src, bytes); }
void copy_within_storage(void* dst, const void* src, size_t bytes) { std::memmove(dst, src, bytes); }

}  // namespace mg::binding
