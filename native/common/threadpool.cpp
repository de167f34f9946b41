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

// One parallel_for call. It lives on the caller's stack; the caller returns only when every
// task is done and no worker still holds the job, so a late worker can never take a task of
// the next job with this job's bounds (the race the counters of a shared job would allow).
struct Job {
  const std::function<void(size_t)>* task;
  size_t n_tasks;
  std::atomic<size_t> next{0};
  size_t done = 0;     // guarded by the pool mutex
  int holders = 0;     // workers inside this job, guarded by the pool mutex
  std::exception_ptr error;
};

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
    Job job;
    job.task = &task;
    job.n_tasks = n;
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &job;
      generation_++;
    }
    wake_.notify_all();
    size_t mine = work(job);
    std::unique_lock<std::mutex> lock(mu_);
    job.done += mine;
    job_ = nullptr;  // no worker joins from now on
    finished_.wait(lock, [&] { return job.done == job.n_tasks && job.holders == 0; });
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  // Takes tasks of `job` until none is left; returns how many this thread ran.
  size_t work(Job& job) {
    in_parallel_region = true;
    size_t completed = 0;
    for (;;) {
      size_t i = job.next.fetch_add(1);
      if (i >= job.n_tasks) break;
      try {
        (*job.task)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!job.error) job.error = std::current_exception();
      }
      completed++;
    }
    in_parallel_region = false;
    return completed;
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      Job* job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return stopping_ || (generation_ != seen && job_ != nullptr); });
        if (stopping_) return;
        seen = generation_;
        job = job_;
        job->holders++;
      }
      size_t completed = work(*job);
      {
        std::lock_guard<std::mutex> lock(mu_);
        job->done += completed;
        job->holders--;
      }
      finished_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex job_mu_;
  std::mutex mu_;
  std::condition_variable wake_, finished_;
  Job* job_ = nullptr;
  uint64_t generation_ = 0;
  bool stopping_ = false;
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
