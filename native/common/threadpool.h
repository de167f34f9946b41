// A small persistent thread pool for the CPU kernels. parallel_for splits a
// range into chunks that the workers and the calling thread take in turn;
// a parallel_for inside a task runs serially, so kernels can nest freely.
#pragma once

#include <cstddef>
#include <functional>

namespace mg {

// Threads used by parallel_for: MEMGPT_NUM_THREADS if set, else the cores this process may use.
int num_threads();
// Resizes the pool (n >= 1); takes effect for the next parallel_for.
void set_num_threads(int n);

// Calls fn(lo, hi) over [begin, end) in chunks of at least `grain` items.
void parallel_for(size_t begin, size_t end, size_t grain, const std::function<void(size_t lo, size_t hi)>& fn);

}  // namespace mg
