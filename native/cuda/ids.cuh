// Token id checks for the CUDA kernels that index by id (embedding, tokenNLL, the copy head): the first
// position whose id lies outside [0, vocab), found on the device so that the error names the same
// position and id as the CPU reference. Included by each family's .cu; everything here is internal
// to the including file (anonymous namespace), so each file has its own kernel and flag.
#pragma once

#include <cstdint>
#include <mutex>

#include "elem.cuh"

namespace mg::cuda {
namespace {

// Every bad position takes part in an integer atomicMin: the result (the smallest bad position) does
// not depend on the order in which threads run.
__global__ void first_bad_id_kernel(const int32_t* ids, int64_t n, int64_t vocab, unsigned long long* first) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int32_t v = ids[i];
    if (v < 0 || int64_t(v) >= vocab) atomicMin(first, static_cast<unsigned long long>(i));
  }
}

// One device word for the result, allocated on first use and kept (8 bytes).
unsigned long long* bad_id_flag(const char* op) {
  static std::mutex mu;
  static unsigned long long* flag = nullptr;
  std::lock_guard<std::mutex> lock(mu);
  if (!flag) check(cudaMalloc(&flag, sizeof *flag), op);
  return flag;
}

// The first i in [0, n) with ids[i] outside [0, vocab), or -1 when all are inside; *bad gets that id.
// Waits for the stream (the answer decides whether the op runs), so the caller fails before it writes
// anything, as the CPU does.
int64_t first_bad_id(const int32_t* ids, int64_t n, int64_t vocab, int32_t* bad, const char* op) {
  if (n <= 0) return -1;
  cudaStream_t s = stream();
  unsigned long long* flag = bad_id_flag(op);
  check(cudaMemsetAsync(flag, 0xff, sizeof *flag, s), op);  // all ones: "none found"
  first_bad_id_kernel<<<blocks_for(n), kThreads, 0, s>>>(ids, n, vocab, flag);
  check_launch(op);
  unsigned long long first = 0;
  check(cudaMemcpyAsync(&first, flag, sizeof first, cudaMemcpyDeviceToHost, s), op);
  synchronize_stream(op);
  if (first == ~0ull) return -1;
  int32_t id = 0;
  check(cudaMemcpyAsync(&id, ids + first, sizeof id, cudaMemcpyDeviceToHost, s), op);
  synchronize_stream(op);
  *bad = id;
  return int64_t(first);
}

}  // namespace
}  // namespace mg::cuda
