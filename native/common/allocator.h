// A caching allocator shared by the CPU and CUDA addons: freed blocks go back to
// per-size free lists instead of to the system, so that steady-state training
// makes no malloc/cudaMalloc calls. Sizes are rounded (512 B granules below
// 1 MiB, 2 MiB granules above) so a block freed by one step fits the next.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

namespace mg {

struct MemoryStats {
  size_t bytes_in_use = 0;     // handed out to tensors (rounded sizes)
  size_t peak_bytes = 0;       // high-water mark of bytes_in_use since the last reset
  size_t bytes_reserved = 0;   // obtained from the system: in use plus cached
  size_t live_blocks = 0;
  size_t system_allocs = 0;    // calls to the raw allocator (malloc / cudaMalloc)
};

class CachingAllocator {
 public:
  using RawAlloc = void* (*)(size_t bytes);  // returns nullptr when out of memory
  using RawFree = void (*)(void* ptr);

  CachingAllocator(RawAlloc raw_alloc, RawFree raw_free) : raw_alloc_(raw_alloc), raw_free_(raw_free) {}
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  static size_t round_size(size_t bytes) {
    const size_t small = 512, large = size_t(2) << 20;
    if (bytes == 0) bytes = 1;
    size_t granule = bytes < (size_t(1) << 20) ? small : large;
    return (bytes + granule - 1) / granule * granule;
  }

  // Returns nullptr when the system is out of memory even after the cache was released.
  void* allocate(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    size_t size = round_size(bytes);
    void* ptr = nullptr;
    auto it = free_.find(size);
    if (it != free_.end()) {
      ptr = it->second;
      free_.erase(it);
    } else {
      ptr = raw_alloc_(size);
      if (!ptr) {  // out of memory: give the cache back and try once more
        release_cached_locked();
        ptr = raw_alloc_(size);
        if (!ptr) return nullptr;
      }
      stats_.bytes_reserved += size;
      stats_.system_allocs++;
    }
    sizes_[ptr] = size;
    stats_.bytes_in_use += size;
    stats_.live_blocks++;
    if (stats_.bytes_in_use > stats_.peak_bytes) stats_.peak_bytes = stats_.bytes_in_use;
    return ptr;
  }

  // Returns false when ptr was not handed out by this allocator (double free).
  bool deallocate(void* ptr) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sizes_.find(ptr);
    if (it == sizes_.end()) return false;
    size_t size = it->second;
    sizes_.erase(it);
    stats_.bytes_in_use -= size;
    stats_.live_blocks--;
    free_.emplace(size, ptr);
    return true;
  }

  void release_cached() {
    std::lock_guard<std::mutex> lock(mu_);
    release_cached_locked();
  }

  MemoryStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.peak_bytes = stats_.bytes_in_use;
  }

 private:
  void release_cached_locked() {
    for (auto& [size, ptr] : free_) {
      raw_free_(ptr);
      stats_.bytes_reserved -= size;
    }
    free_.clear();
  }

  RawAlloc raw_alloc_;
  RawFree raw_free_;
  std::mutex mu_;
  std::multimap<size_t, void*> free_;           // cached blocks by rounded size
  std::unordered_map<void*, size_t> sizes_;     // live blocks
  MemoryStats stats_;
};

}  // namespace mg
