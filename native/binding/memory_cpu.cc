// Host storage for the CPU addon: 64-byte-aligned blocks from the caching
// allocator, handed to JS as opaque type-tagged handles (JS reads and writes
// them through copyToHost/copyFromHost). `free` returns the block to the cache at once.
#include <cstdlib>
#include <cstring>
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

}  // namespace

CachingAllocator& storage_allocator() { return allocator(); }

const napi_type_tag& storage_tag() {
  static const napi_type_tag tag = {0x6d656d6770742d63ULL, 0x70752d626c6f636bULL};  // "memgpt-cpu-block"
  return tag;
}

const char* storage_kind() { return "CPU"; }

void out_of_memory(int64_t bytes) {
  fail("alloc: out of host memory allocating %lld bytes", (long long)bytes);
}

void copy_host_to_storage(void* dst, const void* host_src, size_t bytes) { std::memcpy(dst, host_src, bytes); }
void copy_storage_to_host(void* host_dst, const void* src, size_t bytes) { std::memcpy(host_dst, src, bytes); }
void copy_within_storage(void* dst, const void* src, size_t bytes) { std::memmove(dst, src, bytes); }

}  // namespace mg::binding
