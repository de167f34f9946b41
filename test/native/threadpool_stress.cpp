// Stress test of the CPU thread pool (built and run by test/native.test.ts):
// millions of back-to-back parallel_for jobs of alternating sizes, each task
// counting its own runs; every task must run exactly once, and no job may hang.
#include <atomic>
#include <cstdio>
#include <vector>

#include "../../native/common/threadpool.h"

int main(int argc, char** argv) {
  int jobs = argc > 1 ? std::atoi(argv[1]) : 200000;
  mg::set_num_threads(4);
  std::vector<std::atomic<int>> runs(64);
  for (int j = 0; j < jobs; j++) {
    size_t n = (j % 3 == 0) ? 64 : (j % 3 == 1 ? 3 : 17);  // sizes chosen so stale indices are valid later
    for (size_t i = 0; i < n; i++) runs[i].store(0, std::memory_order_relaxed);
    mg::parallel_for(0, n, 1, [&](size_t lo, size_t hi) {
      for (size_t i = lo; i < hi; i++) runs[i].fetch_add(1, std::memory_order_relaxed);
    });
    for (size_t i = 0; i < n; i++) {
      int r = runs[i].load();
      if (r != 1) {
        std::printf("job %d: task %zu ran %d times\n", j, i, r);
        return 1;
      }
    }
  }
  std::printf("ok: %d jobs\n", jobs);
  return 0;
}
