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

// (handle, byteOffset, hostTypedArray): host array -> device. Returns when the
// copy is done: the source is pageable memory owned by the JS garbage collector.
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
    if (bytes) {
      cudaStream_t s = cuda::stream();
      const uint8_t* host = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
      cuda::check(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, s), "copyFromHost");
      cuda::check(cudaStreamSynchronize(s), "copyFromHost");
    }
    return info.Env().Undefined();
  });
}

// (handle, byteOffset, hostTypedArray): device -> host array, after every
// kernel queued before it has finished (so it also reports their errors).
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
    if (bytes) {
      cudaStream_t s = cuda::stream();
      uint8_t* host = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
      cuda::check(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, s), "copyToHost");
      cuda::check(cudaStreamSynchronize(s), "copyToHost");
    }
    return info.Env().Undefined();
  });
}

// (dst, dstByteOffset, src, srcByteOffset, bytes): device to device, queued on the
// stream (returns at once). Overlapping ranges behave like memmove, as on the CPU.
Napi::Value copy(const Napi::CallbackInfo& info) {
  return guarded(info, "copy", [&] {
    Args args(info, "copy");
    Napi::Value dst_h = args.next("dst");
    int64_t dst_off = args.integer("dstByteOffset");
    Napi::Value src_h = args.next("src");
    int64_t src_off = args.integer("srcByteOffset");
    int64_t bytes = args.integer("bytes");
    uint8_t* dst = static_cast<uint8_t*>(storage_ptr(dst_h, dst_off, bytes, "dst"));
    const uint8_t* src = static_cast<const uint8_t*>(storage_ptr(src_h, src_off, bytes, "src"));
    if (bytes == 0 || dst == src) return info.Env().Undefined();
    cudaStream_t s = cuda::stream();
    size_t n = size_t(bytes);
    bool overlap = dst < src + n && src < dst + n;
    if (!overlap) {
      cuda::check(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, s), "copy");
      return info.Env().Undefined();
    }
    // cudaMemcpy leaves overlapping copies undefined: go through a temporary block,
    // returned to the cache at once (the two copies before any reuse are on the stream).
    void* tmp = allocator().allocate(n);
    if (!tmp) fail("copy: out of GPU memory for a %zu-byte temporary", n);
    cudaError_t err = cudaMemcpyAsync(tmp, src, n, cudaMemcpyDeviceToDevice, s);
    if (err == cudaSuccess) err = cudaMemcpyAsync(dst, tmp, n, cudaMemcpyDeviceToDevice, s);
    allocator().deallocate(tmp);
    cuda::check(err, "copy");
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
