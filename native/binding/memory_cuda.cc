// Device storage for the CUDA addon: GPU memory from the caching allocator,
// handed to JS as type-tagged externals (opaque: JS cannot read device memory,
// and storage_ptr refuses anything that is not one of these). `free` returns the
// block to the cache at once, which is safe because every kernel and copy runs
// in order on mg::cuda::stream() (native/cuda/runtime.h). The external's
// finalizer is only the safety net for tensors never disposed.
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
  bool live;
};

// Identifies externals made by this addon ("memgpt-cuda-block").
const napi_type_tag kDeviceBlockTag = {0x6d656d6770742d63ULL, 0x7564612d626c6f63ULL};

// Handles are used on the JS thread that made them (finalizers run there too),
// so `live` needs no lock; the allocator has its own.
void release(DeviceBlock* block) {
  if (!block->live) return;
  block->live = false;
  allocator().deallocate(block->ptr);
}

DeviceBlock* device_block(const Napi::Value& handle) {
  if (!handle.IsExternal()) return nullptr;
  auto ext = handle.As<Napi::External<DeviceBlock>>();
  if (!ext.CheckTypeTag(&kDeviceBlockTag)) return nullptr;
  return ext.Data();
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
    auto* block = new DeviceBlock{ptr, size_t(bytes), true};
    Napi::External<DeviceBlock> handle;
    try {
      handle = Napi::External<DeviceBlock>::New(info.Env(), block, [](Napi::Env, DeviceBlock* b) {
        release(b);
        delete b;
      });
    } catch (...) {
      release(block);
      delete block;
      throw;
    }
    handle.TypeTag(&kDeviceBlockTag);  // if this throws, the finalizer still returns the block
    return handle;
  });
}

Napi::Value free_(const Napi::CallbackInfo& info) {
  return guarded(info, "free", [&]() -> Napi::Value {
    DeviceBlock* block = info.Length() < 1 ? nullptr : device_block(info[0]);
    if (!block) fail("free: expected a CUDA storage handle");
    if (!block->live) fail("free: storage was already freed");
    release(block);
    return info.Env().Undefined();
  });
}

}  // namespace

void* storage_ptr(const Napi::Value& handle, int64_t byte_offset, int64_t bytes, const char* arg) {
  DeviceBlock* block = device_block(handle);
  if (!block) fail("tensor '%s' is not a CUDA storage handle", arg);
  if (!block->live && bytes > 0) fail("tensor '%s' was disposed", arg);
  size_t cap = block->live ? block->bytes : 0;
  if (byte_offset < 0 || bytes < 0 || uint64_t(byte_offset) + uint64_t(bytes) > cap)
    fail("tensor '%s' needs bytes [%lld, %lld) but its storage has %zu", arg, (long long)byte_offset,
         (long long)(byte_offset + bytes), cap);
  return block->live ? static_cast<uint8_t*>(block->ptr) + byte_offset : nullptr;
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
