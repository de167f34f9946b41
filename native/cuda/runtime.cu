// The process-wide CUDA stream, the reduction scratch buffer and CUDA error
// reporting (see runtime.h for why there is exactly one stream).
#include <atomic>
#include <mutex>

#include "runtime.h"

namespace mg::cuda {

void fail_cuda(const char* op, cudaError_t err) {
  // An error returned by a call is also left as the "last error"; take it, so the
  // next launch check does not report it a second time under another op's name.
  // (Sticky errors, such as an illegal address, stay: the context is lost.)
  cudaGetLastError();
  int driver = 0;
  if (err == cudaErrorInsufficientDriver && cudaDriverGetVersion(&driver) == cudaSuccess && driver == 0)
    fail("%s: no NVIDIA driver found (CUDA error: %s)", op, cudaGetErrorName(err));
  fail("%s: CUDA error: %s (%s)", op, cudaGetErrorString(err), cudaGetErrorName(err));
}

cudaStream_t stream() {
  static std::atomic<cudaStream_t> created{nullptr};
  static std::mutex mu;
  cudaStream_t s = created.load(std::memory_order_acquire);
  if (s) return s;
  std::lock_guard<std::mutex> lock(mu);
  s = created.load(std::memory_order_relaxed);
  if (!s) {
    // Non-blocking: no implicit synchronisation with the legacy default stream,
    // which nothing here uses (every copy is cudaMemcpyAsync on this stream).
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
    created.store(s, std::memory_order_release);
  }
  return s;
}

void* reduction_scratch(size_t bytes) {
  static std::mutex mu;
  static void* buffer = nullptr;
  static size_t capacity = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (bytes > capacity) {
    if (buffer) {
      // Earlier reductions may still be reading it.
      synchronize_stream("reduction scratch");
      cudaFree(buffer);
      buffer = nullptr;
      capacity = 0;
    }
    void* p = nullptr;
    check(cudaMalloc(&p, bytes), "reduction scratch");
    buffer = p;
    capacity = bytes;
  }
  return buffer;
}

namespace {
std::atomic<unsigned long long> waits{0};
}

void count_synchronization() { waits.fetch_add(1, std::memory_order_relaxed); }

void synchronize_stream(const char* op) {
  count_synchronization();
  check(cudaStreamSynchronize(stream()), op);
}

unsigned long long synchronizations() { return waits.load(std::memory_order_relaxed); }

}  // namespace mg::cuda
