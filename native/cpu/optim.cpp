// CPU kernels of the op family "optim": optimizers: AdamW and SGD, global gradient norm and clipping.
// Every kernel walks a list of fixed-size chunks cut across all the tensors, so one parallel_for covers
// a model's parameters whatever their sizes, and reductions combine chunk partials in chunk order.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/threadpool.h"
#include "kernels.h"
#include "isa.h"

namespace mg::cpu {
namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per task: 128 KiB of each stream, enough to amortise a task

struct Chunk {
  int64_t tensor, begin, end;
};

std::vector<Chunk> chunks_of(int64_t count, const int64_t* sizes) {
  std::vector<Chunk> chunks;
  for (int64_t t = 0; t < count; t++) {
    for (int64_t b = 0; b < sizes[t]; b += kChunk) chunks.push_back({t, b, std::min(sizes[t], b + kChunk)});
  }
  return chunks;
}

template <typename Fn>
void for_each_chunk(const std::vector<Chunk>& chunks, Fn&& fn) {
  parallel_for(0, chunks.size(), 1, [&](size_t lo, size_t hi) {
    for (size_t c = lo; c < hi; c++) fn(c, chunks[c]);
  });
}

struct AdamWScalars {
  float beta1, beta2, one_minus_b1, one_minus_b2, eps, decay, step, bc2;
};

void adamw_range_generic(float* w, const float* g, float* m, float* v, int64_t n, const AdamWScalars& k) {
  for (int64_t i = 0; i < n; i++) {
    float gi = g[i];
    float mi = k.beta1 * m[i] + k.one_minus_b1 * gi;
    float vi = k.beta2 * v[i] + k.one_minus_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] = w[i] * k.decay - k.step * (mi / (std::sqrt(vi) / k.bc2 + k.eps));  // PyTorch's rounding order
  }
}

// The same arithmetic 8 lanes at a time (std::sqrt's errno keeps the compiler from vectorising the loop above).
// Products are not fused (no FMA), so both versions round alike.
__attribute__((target("avx2"))) void adamw_range_avx2(float* w, const float* g, float* m, float* v, int64_t n,
                                                     const AdamWScalars& k) {
  const __m256 b1 = _mm256_set1_ps(k.beta1), b2 = _mm256_set1_ps(k.beta2), c1 = _mm256_set1_ps(k.one_minus_b1),
               c2 = _mm256_set1_ps(k.one_minus_b2), eps = _mm256_set1_ps(k.eps), dec = _mm256_set1_ps(k.decay),
               step = _mm256_set1_ps(k.step), bc2 = _mm256_set1_ps(k.bc2);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 gi = _mm256_loadu_ps(g + i);
    __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(c1, gi));
    __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)), _mm256_mul_ps(_mm256_mul_ps(c2, gi), gi));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2), eps);
    __m256 wi = _mm256_mul_ps(_mm256_loadu_ps(w + i), dec);
    _mm256_storeu_ps(w + i, _mm256_sub_ps(wi, _mm256_mul_ps(step, _mm256_div_ps(mi, denom))));
  }
  adamw_range_generic(w + i, g + i, m + i, v + i, n - i, k);
}

using AdamWRange = void (*)(float*, const float*, float*, float*, int64_t, const AdamWScalars&);
const AdamWRange adamw_range = has_avx2() ? adamw_range_avx2 : adamw_range_generic;

}  // namespace

void adamw_step(int64_t count, const int64_t* sizes, float* const* w, const float* const* g, float* const* m,
                float* const* v, const float* decay, const float* step_size, const float* bc2_sqrt, float beta1,
                float beta2, float eps) {
  for_each_chunk(chunks_of(count, sizes), [&](size_t, const Chunk& c) {
    int64_t t = c.tensor;
    AdamWScalars k{beta1, beta2, 1.f - beta1, 1.f - beta2, eps, decay[t], step_size[t], bc2_sqrt[t]};
    adamw_range(w[t] + c.begin, g[t] + c.begin, m[t] + c.begin, v[t] + c.begin, c.end - c.begin, k);
  });
}

void sgd_step(int64_t count, const int64_t* sizes, float* const* w, const float* const* g, float lr) {
  for_each_chunk(chunks_of(count, sizes), [&](size_t, const Chunk& c) {
    float* __restrict wt = w[c.tensor];
    const float* __restrict gt = g[c.tensor];
    for (int64_t i = c.begin; i < c.end; i++) wt[i] -= lr * gt[i];
  });
}

double sum_squares(int64_t count, const int64_t* sizes, const float* const* x) {
  std::vector<Chunk> chunks = chunks_of(count, sizes);
  std::vector<double> partial(chunks.size());
  for_each_chunk(chunks, [&](size_t idx, const Chunk& c) {
    const float* xt = x[c.tensor];
    // Four double lanes: vectorisable, and the order is fixed by the chunk, not by the thread count.
    double acc[4] = {0, 0, 0, 0};
    int64_t i = c.begin;
    for (; i + 4 <= c.end; i += 4) {
      for (int l = 0; l < 4; l++) acc[l] += double(xt[i + l]) * double(xt[i + l]);
    }
    for (; i < c.end; i++) acc[0] += double(xt[i]) * double(xt[i]);
    partial[idx] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  });
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

void scale_tensors(int64_t count, const int64_t* sizes, float* const* x, float factor) {
  for_each_chunk(chunks_of(count, sizes), [&](size_t, const Chunk& c) {
    float* __restrict xt = x[c.tensor];
    for (int64_t i = c.begin; i < c.end; i++) xt[i] *= factor;
  });
}

}  // namespace mg::cpu
