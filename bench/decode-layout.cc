// Why the decoding key cache is blocked (native/common/attention.inc): the scores of one query over keys 0 … p of
// every (sequence, head) of 4 layers at the small preset's batch 16 (d 64, T 128), with the caches cold (a 64 MB
// buffer is written between runs, as a decoding step's other layers and weights do), for the transposed layout the
// decoder had ([d, T] per head: d runs of p + 1 floats, T apart) and the blocked one it has ([⌈T/8⌉, d, 8]: one run).
// Standalone, no project code: g++ -O3 -o /tmp/decode-layout bench/decode-layout.cc && /tmp/decode-layout
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

constexpr int d = 64, T = 128, heads = 16 * 4, layers = 4;

__attribute__((target("avx2,fma"))) float scores_transposed(const float* kt, const float* q, int n, float* sc) {
  for (int j = 0; j < n; j++) sc[j] = 0;
  for (int i = 0; i < d; i++) {
    const float qi = q[i];
    const float* row = kt + i * T;
    for (int j = 0; j < n; j++) sc[j] += qi * row[j];
  }
  return sc[n - 1];
}

__attribute__((target("avx2,fma"))) float scores_blocked(const float* kb, const float* q, int n, float* sc) {
  for (int blk = 0; blk * 8 < n; blk++) {
    float acc[8] = {};
    const float* b = kb + blk * d * 8;
    for (int i = 0; i < d; i++)
      for (int e = 0; e < 8; e++) acc[e] += q[i] * b[i * 8 + e];
    for (int e = 0; e < 8; e++) sc[blk * 8 + e] = acc[e];
  }
  return sc[n - 1];
}

// The same sums, four blocks side by side: four independent chains of FMAs instead of one (each key's features are
// still summed in order, so the scores are the same).
__attribute__((target("avx2,fma"))) float scores_blocked4(const float* kb, const float* q, int n, float* sc) {
  const int blocks = (n + 7) / 8;
  int blk = 0;
  for (; blk + 4 <= blocks; blk += 4) {
    float acc[4][8] = {};
    const float* b = kb + blk * d * 8;
    for (int i = 0; i < d; i++)
      for (int g = 0; g < 4; g++)
        for (int e = 0; e < 8; e++) acc[g][e] += q[i] * b[g * d * 8 + i * 8 + e];
    for (int g = 0; g < 4; g++)
      for (int e = 0; e < 8; e++) sc[(blk + g) * 8 + e] = acc[g][e];
  }
  if (blk < blocks) scores_blocked(kb + blk * d * 8, q, n - blk * 8, sc + blk * 8);  // the last 1–3 blocks alone
  return sc[n - 1];
}

// The kernel's form (native/cpu/attention.cpp, blocked_scores): up to eight blocks side by side, their lanes written
// as GCC vectors. As scalar loops over arrays (the two above), GCC vectorised across the features with permutes and
// kept the accumulators in memory.
typedef float Lanes __attribute__((vector_size(32), aligned(4), __may_alias__));

template <int G>
__attribute__((target("avx2,fma"))) inline void group_vec(const float* b, const float* q, float* sc) {
  Lanes acc[G];
  for (int g = 0; g < G; g++) acc[g] = Lanes{};
  for (int i = 0; i < d; i++)
    for (int g = 0; g < G; g++) acc[g] += q[i] * *reinterpret_cast<const Lanes*>(b + g * d * 8 + i * 8);
  for (int g = 0; g < G; g++) __builtin_memcpy(sc + g * 8, &acc[g], sizeof(Lanes));
}

__attribute__((target("avx2,fma"))) float scores_blocked8_vec(const float* kb, const float* q, int n, float* sc) {
  const int blocks = (n + 7) / 8;
  for (int blk = 0; blk < blocks;) {
    const int left = blocks - blk, group = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
    const float* b = kb + blk * d * 8;
    if (group == 8) group_vec<8>(b, q, sc + blk * 8);
    else if (group == 4) group_vec<4>(b, q, sc + blk * 8);
    else if (group == 2) group_vec<2>(b, q, sc + blk * 8);
    else group_vec<1>(b, q, sc + blk * 8);
    blk += group;
  }
  return sc[n - 1];
}

int main() {
  std::vector<float> keys(size_t(layers) * heads * d * T, 0.01f), q(d, 1.f), sc(T + 64), flush(size_t(16) << 20, 1.f);
  std::printf("keys 0 … p of %d heads × %d layers (d %d, T %d), cold caches, best of 20\n", heads, layers, d, T);
  for (int p : {15, 31, 63, 95, 127}) {
    double best[4] = {1e9, 1e9, 1e9, 1e9};
    float sink = 0;
    for (int rep = 0; rep < 20; rep++) {
      for (int layout = 0; layout < 4; layout++) {
        for (size_t i = 0; i < flush.size(); i += 16) flush[i] += 1.f;
        const auto t0 = std::chrono::steady_clock::now();
        for (int h = 0; h < layers * heads; h++) {
          const float* k = keys.data() + size_t(h) * d * T;
          sink += layout == 3   ? scores_blocked8_vec(k, q.data(), p + 1, sc.data())
                  : layout == 2 ? scores_blocked4(k, q.data(), p + 1, sc.data())
                  : layout == 1 ? scores_blocked(k, q.data(), p + 1, sc.data())
                                : scores_transposed(k, q.data(), p + 1, sc.data());
        }
        best[layout] = std::min(best[layout], std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
    }
    const double bytes = double(layers) * heads * d * (p + 1) * 4;
    std::printf("p %3d: transposed %6.0f us (%4.1f GB/s), blocked %6.0f us (%4.1f GB/s), blocked 4 at a time %6.0f us (%4.1f GB/s), "
                "8 at a time as vectors %6.0f us (%4.1f GB/s)%s\n",
                p, best[0] * 1e6, bytes / best[0] / 1e9, best[1] * 1e6, bytes / best[1] / 1e9, best[2] * 1e6, bytes / best[2] / 1e9,
                best[3] * 1e6, bytes / best[3] / 1e9, sink < 0 ? "!" : "");
  }
}
