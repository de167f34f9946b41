// CUDA runtime helpers shared by the CUDA kernels and the CUDA binding: the one
// stream that every kernel and copy is queued on, and error checks that throw
// mg::Error (so a CUDA failure becomes a JS exception, never an abort).
//
// One stream, in order, is what makes the caching allocator safe: a block freed
// while kernels that use it are still queued can be handed out again at once,
// because anything that touches it next is queued behind them on the same stream.
#pragma once

#include <cuda_runtime.h>

#include "../common/common.h"

namespace mg::cuda {

// The non-blocking stream of this process, created on first use on the current
// device (device 0 unless the host thread chose another). Throws when there is no
// usable device.
cudaStream_t stream();

// Device memory for the partial sums of two-pass reductions, grown on demand and
// never freed (it is not counted by the tensor allocator). Safe to reuse call
// after call only because every user runs on stream() in order.
void* reduction_scratch(size_t bytes);

[[noreturn]] void fail_cuda(const char* op, cudaError_t err);

// Waits for everything queued on stream(), and counts the wait: every host synchronisation of this addon goes
// through here, so that a test can check that decoding waits once a token, not once a layer.
void synchronize_stream(const char* op);
// How many times the host has waited for the stream so far (synchronize_stream, and the allocator's frees).
unsigned long long synchronizations();
// Counts a wait made without synchronize_stream (where throwing is not allowed).
void count_synchronization();

inline void check(cudaError_t err, const char* op) {
  if (err != cudaSuccess) fail_cuda(op, err);
}

// After every kernel launch: reports a bad launch configuration at once (and any
// earlier asynchronous error that is still pending).
inline void check_launch(const char* op) { check(cudaGetLastError(), op); }

}  // namespace mg::cuda
