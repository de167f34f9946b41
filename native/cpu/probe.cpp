// Measures this machine's ceilings for the roofline figures of the kernel
// benchmarks: peak float32 FMA throughput over all threads, and the bandwidth
// of a large memory copy.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../common/threadpool.h"
#include "isa.h"
#include "probe.h"

namespace mg::cpu {
namespace {

using Clock = std::chrono::steady_clock;

// 12 independent FMA chains cover the 4-cycle latency of two FMA pipes; returns flops done.
__attribute__((target("avx2,fma"))) double fma_burst_avx2(int64_t iters) {
  __m256 acc[12];
  for (int i = 0; i < 12; i++) acc[i] = _mm256_set1_ps(float(i) * 1e-3f);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; it++) {
    for (int i = 0; i < 12; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  float sink = 0;
  for (int i = 0; i < 12; i++) sink += _mm256_cvtss_f32(acc[i]);
  if (sink == 12345.f) std::abort();  // keep the chains alive
  return double(iters) * 12 * 8 * 2;
}

double fma_burst_generic(int64_t iters) {
  float acc[16];
  for (int i = 0; i < 16; i++) acc[i] = float(i) * 1e-3f;
  for (int64_t it = 0; it < iters; it++) {
    for (int i = 0; i < 16; i++) acc[i] = acc[i] * 0.999999f + 1e-7f;
  }
  float sink = 0;
  for (float v : acc) sink += v;
  if (sink == 12345.f) std::abort();
  return double(iters) * 16 * 2;
}

}  // namespace

double probe_peak_gflops(double seconds) {
  bool avx2 = has_avx2();
  int threads = num_threads();
  std::vector<double> rates(threads, 0);
  parallel_for(0, threads, 1, [&](size_t lo, size_t hi) {
    for (size_t t = lo; t < hi; t++) {
      double best = 0;
      auto end = Clock::now() + std::chrono::duration<double>(seconds);
      while (Clock::now() < end) {
        auto t0 = Clock::now();
        double flops = avx2 ? fma_burst_avx2(1 << 20) : fma_burst_generic(1 << 20);
        double dt = std::chrono::duration<double>(Clock::now() - t0).count();
        best = std::max(best, flops / dt);
      }
      rates[t] = best;
    }
  });
  double total = 0;
  for (double r : rates) total += r;
  return total / 1e9;
}

namespace {

// a[i] = b[i] + s·c[i] over [lo, hi): the STREAM triad, 2 reads and 1 write per element.
__attribute__((target("avx2,fma"))) void triad_avx2(float* a, const float* b, const float* c, size_t lo, size_t hi) {
  const __m256 s = _mm256_set1_ps(0.5f);
  size_t i = lo;
  for (; i + 8 <= hi; i += 8) _mm256_storeu_ps(a + i, _mm256_fmadd_ps(s, _mm256_loadu_ps(c + i), _mm256_loadu_ps(b + i)));
  for (; i < hi; i++) a[i] = b[i] + 0.5f * c[i];
}

void triad_generic(float* a, const float* b, const float* c, size_t lo, size_t hi) {
  for (size_t i = lo; i < hi; i++) a[i] = b[i] + 0.5f * c[i];
}

}  // namespace

double probe_copy_gbs(int64_t bytes, int reps) {
  // The ceiling for memory-bound kernels: the best of a parallel memcpy and a parallel STREAM
  // triad, counting (as the kernels' own figures do) bytes read plus bytes written. glibc's
  // large-copy path alone understates what ordinary load/store loops reach on some machines.
  bool avx2 = has_avx2();
  size_t n = size_t(bytes) / sizeof(float);
  std::vector<float> a(n, 0.f), b(n, 1.f), c(n, 2.f);
  double best = 0;
  for (int r = 0; r < reps; r++) {
    auto t0 = Clock::now();
    parallel_for(0, n, size_t(1) << 18, [&](size_t lo, size_t hi) { std::memcpy(&a[lo], &b[lo], (hi - lo) * sizeof(float)); });
    double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, 2.0 * double(n * sizeof(float)) / dt / 1e9);
    t0 = Clock::now();
    parallel_for(0, n, size_t(1) << 18, [&](size_t lo, size_t hi) {
      if (avx2) triad_avx2(a.data(), b.data(), c.data(), lo, hi);
      else triad_generic(a.data(), b.data(), c.data(), lo, hi);
    });
    dt = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, 3.0 * double(n * sizeof(float)) / dt / 1e9);
  }
  return best;
}

}  // namespace mg::cpu
