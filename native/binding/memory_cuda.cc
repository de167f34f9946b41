// Device storage for the CUDA addon: GPU memory from the caching allocator,
// handed to JS as type-tagged externals (opaque: JS cannot read device memory,
// and storage_ptr in memory.cc refuses anything else). `free` returns the
// block to the cache at once, which is safe because every kernel and copy runs
// in order on mg::cuda::stream() (native/cuda/runtime.h).
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
    cuda::count_synchronization();
    cudaStreamSynchronize(cuda::stream());
  } catch (...) {
  }
  cudaFree(ptr);
}

CachingAllocator& allocator() {
  // Never destroyed: used until exit.
  static CachingAllocator* a = new CachingAllocator(raw_device_alloc, raw_device_free);
  return *a;
}

}  // namespace

CachingAllocator& storage_allocator() { return allocator(); }

const napi_type_tag& storage_tag() {
  static const napi_type_tag tag = {0x6d656d6770742d63ULL, 0x7564612d626c6f63ULL};  // "memgpt-cuda-block"
  return tag;
}

const char* storage_kind() { return "CUDA"; }

void out_of_memory(int64_t bytes) {
  MemoryStats s = allocator().stats();
  fail("alloc: out of GPU memory allocating %lld bytes (%zu in use, %zu cached)", (long long)bytes, s.bytes_in_use,
       s.bytes_reserved - s.bytes_in_use);
}

// The host side is pageable memory owned by the JS garbage collector: wait until the copy is done.
void copy_host_to_storage(void* dst, const void* host_src, size_t bytes) {
  cudaStream_t s = cuda::stream();
  cuda::check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, s), "copyFromHost");
  cuda::synchronize_stream("copyFromHost");
}

// Runs after every kernel queued before it (so it also reports their errors).
void copy_storage_to_host(void* host_dst, const void* src, size_t bytes) {
  cudaStream_t s = cuda::stream();
  cuda::check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, s), "copyToHost");
  cuda::synchronize_stream("copyToHost");
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
