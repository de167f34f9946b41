// Device storage for the CUDA addon: GPU memory from the caching allocator,
// handed to JS as type-tagged externals (opaque: JS cannot read device memory,
// and storage_ptr refuses anything that is not one of these). `free` returns the
// block to the cache at once, which is safe because every kernel and copy runs
// in order on mg::cuda::stream() (native/cuda/runtime.h).
#include <mutex>
#include <unordered_map>

#include "../common/allocator.h"
#include "../cuda/runtime.h"
#include "binding.h"

namespace mg::binding {
namespace {

// nullptr only when the device is out of memory (the allocator then releases its
// cache and tries again); any other failure, such as no usable GPU, throws.
void* raw_device_alloc(size_t bytes) {
  void* ptr = nullptr;
  cudaError_t err = cudaMalloc(&ptr, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // not sticky: clear it so that the next launch check does not report it
    return nullptr;
  }
  cuda::check(err, "alloc");
  return ptr;
}

// Called for cached blocks only (emptyCache, or an allocation that ran out of
// memory), and must not throw: the allocator is updating its lists.
void raw_device_free(void* ptr) {
  try {
    // Kernels queued before the block was freed may still use it; cudaFree would
    // wait for the device too, but saying so here does not depend on that.
    cudaStreamSynchronize(cuda::stream());
  } catch (...) {
  }
  cudaFree(ptr);
}

CachingAllocator& allocator() {
  // Never destroyed: finalizers may run at exit, after static destructors.
  static CachingAllocator* a = new CachingAllocator(raw_device_alloc, raw_device_free);
  return *a;
}

struct DeviceBlock {
  void* ptr;
  size_t bytes;  // as asked for: the bounds that storage_ptr checks
};

// Identifies externals made by this addon ("memgpt-cuda-block").
const napi_type_tag kDeviceBlockTag = {0x6d656d6770742d63ULL, 0x7564612d626c6f63ULL};

// A handle carries only a block id, never a pointer: a handle used after `free` finds no block
// (a clear error) instead of reading freed memory. There is no native finalizer, because Node runs
// those on the event loop and a synchronous training loop would pile one up per allocation; tensors
// free their storage explicitly, with lib/tensor.ts's FinalizationRegistry as the safety net.
std::mutex blocks_mu;
std::unordered_map<uint64_t, DeviceBlock> live_blocks;
uint64_t next_block_id = 1;

// The id in a handle of this addon, or 0 for anything else.
uint64_t block_id(const Napi::Value& handle) {
  if (!handle.IsExternal()) return 0;
  auto ext = handle.As<Napi::External<void>>();
  if (!ext.CheckTypeTag(&kDeviceBlockTag)) return 0;
  return uint64_t(reinterpret_cast<uintptr_t>(ext.Data()));
}

Napi::Value alloc(const Napi::CallbackInfo& info) {
  return guarded(info, "alloc", [&]() -> Napi::Value {
    Args args(info, "alloc");
    int64_t bytes = args.integer("bytes");
    void* ptr = allocator().allocate(size_t(bytes));
    if (!ptr) {
      MemoryStats s = allocator().stats();
      fail("alloc: out of GPU memory allocating %lld bytes (%zu in use, %zu cached)", (long long)bytes,
           s.bytes_in_use, s.bytes_reserved - s.bytes_in_use);
    }
    uint64_t id;
    {
      std::lock_guard<std::mutex> lock(blocks_mu);
      id = next_block_id++;
      live_blocks[id] = DeviceBlock{ptr, size_t(bytes)};
    }
    try {
      auto handle = Napi::External<void>::New(info.Env(), reinterpret_cast<void*>(uintptr_t(id)));
      handle.TypeTag(&kDeviceBlockTag);
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
    if (!id) fail("free: expected a CUDA storage handle");
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
  if (!id) fail("tensor '%s' is not a CUDA storage handle", arg);
  DeviceBlock block{nullptr, 0};
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

// The host side is pageable memory owned by the JS garbage collector: wait until the copy is done.
void copy_host_to_storage(void* dst, const void* host_src, size_t bytes) {
  cudaStream_t s = cuda::stream();
  cuda::check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, s), "copyFromHost");
  cuda::check(cudaStreamSynchronize(s), "copyFromHost");
}

// Runs after every kernel queued before it (so it also reports their errors).
void copy_storage_to_host(void* host_dst, const void* src, size_t bytes) {
  cudaStream_t s = cuda::stream();
  cuda::check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, s), "copyToHost");
  cuda::check(cudaStreamSynchronize(s), "copyToHost");
}

// Queued on the stream (returns at once). cudaMemcpy leaves overlapping copies undefined, so
// those go through a temporary block, returned to the cache at once (both copies are on the stream).
void copy_within_storage(void* dst, const void* src, size_t n) {
  cudaStream_t s = cuda::stream();
  auto* d = static_cast<uint8_t*>(dst);
  auto* c = static_cast<const uint8_t*>(src);
  if (!(d < c + n && c < d + n)) {
    cuda::check(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, s), "copy");
    return;
  }
  void* tmp = allocator().allocate(n);
  if (!tmp) fail("copy: out of GPU memory for a %zu-byte temporary", n);
  cudaError_t err = cudaMemcpyAsync(tmp, src, n, cudaMemcpyDeviceToDevice, s);
  if (err == cudaSuccess) err = cudaMemcpyAsync(dst, tmp, n, cudaMemcpyDeviceToDevice, s);
  allocator().deallocate(tmp);
  cuda::check(err, "copy");
}

}  // namespace mg::binding
