// Implementation of the thread pool declared in threadpool.h.
#include "threadpool.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace mg {
namespace {

int default_threads() {
  if (const char* env = std::getenv("MEMGPT_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n >= 1) return n;
  }
  unsigned n = std::thread::hardware_concurrency();
  return n >= 1 ? int(n) : 1;
}

thread_local bool in_parallel_region = false;

class Pool {
 public:
  explicit Pool(int threads) {
    for (int i = 0; i + 1 < threads; i++) workers_.emplace_back([this] { worker_loop(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return int(workers_.size()) + 1; }

  // Runs task(i) for i in [0, n); the caller takes part. One job at a time.
  void run(size_t n, const std::function<void(size_t)>& task) {
    std::lock_guard<std::mutex> job_lock(job_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      task_ = &task;
      n_tasks_ = n;
      next_.store(0);
      done_ = 0;
      error_ = nullptr;
      generation_++;
    }
    wake_.notify_all();
    work();
    std::unique_lock<std::mutex> lock(mu_);
    finished_.wait(lock, [&] { return done_ == n_tasks_; });
    task_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void work() {
    in_parallel_region = true;
    size_t completed = 0;
    for (;;) {
      size_t i = next_.fetch_add(1);
      if (i >= n_tasks_) break;
      try {
        (*task_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_) error_ = std::current_exception();
      }
      completed++;
    }
    in_parallel_region = false;
    if (completed) {
      std::lock_guard<std::mutex> lock(mu_);
      done_ += completed;
      if (done_ == n_tasks_) finished_.notify_all();
    }
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return stopping_ || (generation_ != seen && task_ != nullptr); });
        if (stopping_) return;
        seen = generation_;
      }
      work();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex job_mu_;
  std::mutex mu_;
  std::condition_variable wake_, finished_;
  const std::function<void(size_t)>* task_ = nullptr;
  size_t n_tasks_ = 0;
  std::atomic<size_t> next_{0};
  size_t done_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
};

std::mutex pool_mu;
std::unique_ptr<Pool> pool;
int requested_threads = 0;

Pool& get_pool() {
  std::lock_guard<std::mutex> lock(pool_mu);
  if (requested_threads == 0) requested_threads = default_threads();
  if (!pool || pool->size() != requested_threads) {
    pool.reset();
    pool = std::make_unique<Pool>(requested_threads);
  }
  return *pool;
}

}  // namespace

int num_threads() {
  std::lock_guard<std::mutex> lock(pool_mu);
  if (requested_threads == 0) requested_threads = default_threads();
  return requested_threads;
}

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lock(pool_mu);
  requested_threads = std::max(1, n);
}

void parallel_for(size_t begin, size_t end, size_t grain, const std::function<void(size_t, size_t)>& fn) {
  if (end <= begin) return;
  size_t n = end - begin;
  grain = std::max<size_t>(grain, 1);
  int threads = in_parallel_region ? 1 : num_threads();
  size_t max_chunks = (n + grain - 1) / grain;
  if (threads <= 1 || max_chunks <= 1) {
    fn(begin, end);
    return;
  }
  // A few chunks per thread balances uneven work without much scheduling cost.
  size_t chunks = std::min<size_t>(max_chunks, size_t(threads) * 4);
  size_t step = (n + chunks - 1) / chunks;
  chunks = (n + step - 1) / step;
  get_pool().run(chunks, [&](size_t c) {
    size_t lo = begin + c * step;
    size_t hi = std::min(end, lo + step);
    fn(lo, hi);
  });
}

}  // namespace mg
