// CPU kernels of the op family "attention": fused causal self-attention with RoPE, the memory read and its gate.
//
// FlashAttention on the CPU. The forward runs one task per (batch, head, block of kQB query rows) and walks the
// keys in tiles of kKB with an online softmax, so scores exist only a [kQB, kKB] tile at a time, never [T, T].
// It keeps, per row, the logsumexp of the self part and of the memory part (float32, [B, H, T]); with memory it
// also saves A and R (each [B, T, D], the size of one third of qkv), because the gate gradient and the
// D_i = rowsum(dA_i ∘ A_i) terms need A and R separately and they cannot be recovered from O = g·R + (1 − g)·A.
// The backward recomputes the score tiles from q, k and the logsumexps. It runs one task per (batch, head), so
// the thread that owns a head owns its dk, dv, dmk, dmv accumulators: no races, and a fixed summation order
// (deterministic whatever the thread count). Tiles are stored key-major-transposed so the inner loops run
// contiguously over keys (or over the head width) and vectorise without reassociating sums; each task body is
// compiled twice, for AVX2+FMA and for plain x86-64, and picked at run time.
// Storage is float32 or bfloat16 (the task bodies are templates on the element type T); the math is float32
// either way. bfloat16 rows are widened as they are read (into the tiles, or a head's rows into a float scratch
// where the float32 code reads storage in place), and every output is rounded once, from its final float32 value.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "../common/threadpool.h"
#include "elem.h"
#include "isa.h"
#include "kernels.h"
#include "simd.h"

namespace mg::cpu {
namespace {

constexpr int64_t kQB = 32;  // query rows per block
constexpr int64_t kKB = 64;  // keys per tile

#define MG_INLINE inline __attribute__((always_inline))

struct Dims {
  int64_t B, T, H, d, S;
  bool rope;
  int mem_mode;  // kMemJoint | kMemPositions (attention.inc)
  int64_t D() const { return H * d; }
  bool joint() const { return (mem_mode & kMemJoint) != 0; }
  // The memory read by the rotated query against slot keys rotated at their positions (the slots sit just before
  // the segment: computed as query p at p + S, slot j at j, since RoPE scores depend only on the distance).
  bool mem_positions() const { return rope && (mem_mode & kMemPositions) != 0; }
  float scale() const { return float(1.0 / std::sqrt(double(d))); }
};

// cos(pθ_i), sin(pθ_i) for p < n, i < d/2, θ_i = 10000^(−2i/d): computed in double, stored as float.
struct RopeTable {
  std::vector<float> cos, sin;
  int64_t half = 0;
  RopeTable() = default;
  RopeTable(int64_t n, int64_t d) : cos(size_t(n * (d / 2))), sin(cos.size()), half(d / 2) {
    for (int64_t p = 0; p < n; p++) {
      for (int64_t i = 0; i < half; i++) {
        double angle = double(p) * std::pow(10000.0, -2.0 * double(i) / double(d));
        cos[size_t(p * half + i)] = float(std::cos(angle));
        sin[size_t(p * half + i)] = float(std::sin(angle));
      }
    }
  }
};

// The table a call needs (positions T, plus S for a positional memory read), made once per (positions, width) and
// kept: building it took a pow and a sincos per entry on every call, a few per cent of a tiny preset's attention.
const RopeTable& rope_table(const Dims& s) {
  static const RopeTable none;
  if (!s.rope) return none;
  static std::mutex mutex;
  static std::map<std::pair<int64_t, int64_t>, std::unique_ptr<RopeTable>> tables;
  const int64_t n = s.T + (s.mem_positions() ? s.S : 0);
  std::lock_guard<std::mutex> lock(mutex);
  auto& table = tables[{n, s.d}];
  if (!table) table = std::make_unique<RopeTable>(n, s.d);
  return *table;
}

// Rotate-half RoPE of one head row z (float32 or bfloat16 storage) at position p, into float32 out.
template <typename T>
MG_INLINE void rope_rotate(const T* __restrict z, float* __restrict out, const RopeTable& rt, int64_t p) {
  const float* c = rt.cos.data() + p * rt.half;
  const float* s = rt.sin.data() + p * rt.half;
  const int64_t h = rt.half;
  for (int64_t i = 0; i < h; i++) {
    float a = load(z + i), b = load(z + i + h);
    out[i] = a * c[i] - b * s[i];
    out[i + h] = a * s[i] + b * c[i];
  }
}

// out += Rᵀ·dz: the gradient through rope_rotate (R is a rotation, so its transpose undoes it).
MG_INLINE void rope_rotate_back_add(const float* __restrict dz, float* __restrict out, const RopeTable& rt, int64_t p) {
  const float* c = rt.cos.data() + p * rt.half;
  const float* s = rt.sin.data() + p * rt.half;
  const int64_t h = rt.half;
  for (int64_t i = 0; i < h; i++) {
    float da = dz[i], db = dz[i + h];
    out[i] += da * c[i] + db * s[i];
    out[i + h] += db * c[i] - da * s[i];
  }
}

// n rows of width d (row j at src + j·ld) as float32: src itself for float32 storage (*ld_out = ld), else the
// rows widened into buf, contiguous (*ld_out = d). Either way the float32 code reads the same values.
template <typename T>
MG_INLINE const float* widen_rows(const T* src, int64_t ld, int64_t n, int64_t d, float* buf, int64_t* ld_out) {
  if constexpr (std::is_same_v<T, float>) {
    *ld_out = ld;
    return src;
  } else {
    for (int64_t j = 0; j < n; j++)
      for (int64_t i = 0; i < d; i++) buf[j * d + i] = load(src + j * ld + i);
    *ld_out = d;
    return buf;
  }
}

// dst[i] = src[i] for i < n, rounded to dst's storage type.
template <typename T>
MG_INLINE void store_row(T* __restrict dst, const float* __restrict src, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::copy(src, src + n, dst);
  } else {
    for (int64_t i = 0; i < n; i++) store(dst + i, src[i]);
  }
}

MG_INLINE void axpy(float alpha, const float* __restrict x, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

// out[i] += Σ_r coef[r·cs] · x[r·ldx + i] for i < n: a weighted sum of `rows` rows (a row of p·v, dS·k, dSᵀ·q or
// Pᵀ·dY). Chunks of 32 (then 8) columns stay in registers across all the rows — one load and store of out a
// chunk instead of one per row, which is what the axpy per row cost — and each column still sums its rows in
// order, so results are bit-identical to the axpy loop.
template <int W>
MG_INLINE void accumulate_chunk(const float* __restrict coef, int64_t cs, const float* __restrict x, int64_t ldx,
                                int64_t rows, float* __restrict out) {
  float acc[W];
  for (int i = 0; i < W; i++) acc[i] = out[i];
  for (int64_t r = 0; r < rows; r++) {
    const float c = coef[r * cs];
    const float* xr = x + r * ldx;
    for (int i = 0; i < W; i++) acc[i] += c * xr[i];
  }
  for (int i = 0; i < W; i++) out[i] = acc[i];
}

MG_INLINE void accumulate_rows(const float* coef, int64_t cs, const float* x, int64_t ldx, int64_t rows, float* out,
                               int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) accumulate_chunk<32>(coef, cs, x + i, ldx, rows, out + i);
  for (; i + 8 <= n; i += 8) accumulate_chunk<8>(coef, cs, x + i, ldx, rows, out + i);
  for (; i < n; i++) accumulate_chunk<1>(coef, cs, x + i, ldx, rows, out + i);
}

// Σ x[i]·y[i] in double, in four interleaved partial sums (fixed order): one chain of dependent double adds made
// these row sums latency-bound, the largest single cost of the memory read's backward at the tiny preset.
MG_INLINE double dot4(const float* x, const float* y, int64_t n) {
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; j++) acc[j] += double(x[i + j]) * double(y[i + j]);
  for (; i < n; i++) acc[0] += double(x[i]) * double(y[i]);
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

MG_INLINE float dot(const float* x, const float* y, int64_t n) { return float(dot4(x, y, n)); }

// Σ x[i]·(y[i] − z[i]) in double, the same four partial sums (the difference taken exactly, before the product).
MG_INLINE double dot4_diff(const float* x, const float* y, const float* z, int64_t n) {
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; j++) acc[j] += double(x[i + j]) * (double(y[i + j]) - double(z[i + j]));
  for (; i < n; i++) acc[0] += double(x[i]) * (double(y[i]) - double(z[i]));
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// x[j] = exp(x[j] − shift) for j < n, returning their sum: the softmax numerators of one row (arguments ≤ 0
// up to rounding). The AVX2 version uses simd.h's Cephes expf, 8 lanes at a time, because a scalar
// libm exp per score costs about as much as the dot products around it.
float exp_row_generic(float* x, int64_t n, float shift) {
  float sum = 0.f;
  for (int64_t j = 0; j < n; j++) {
    x[j] = std::exp(x[j] - shift);
    sum += x[j];
  }
  return sum;
}

__attribute__((target("avx2,fma"))) float exp_row_avx2(float* x, int64_t n, float shift) {
  const __m256 sh = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + j), sh));
    _mm256_storeu_ps(x + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  for (; j < n; j++) {
    x[j] = std::exp(x[j] - shift);
    sum += x[j];
  }
  return sum;
}

using ExpRow = float (*)(float*, int64_t, float);
const ExpRow exp_row = has_avx2() ? exp_row_avx2 : exp_row_generic;

MG_INLINE float sigmoid(float x) { return float(1.0 / (1.0 + std::exp(-double(x)))); }

// The read gate of one row: σ(gate logit), or with the joint softmax σ(gate logit + lse_mem − lse_self), which
// with a zero logit is the memory's share of one softmax over the slots and the segment's keys together.
template <typename T>
MG_INLINE float gate_of(const Dims& s, const T* logit, float lse_mem, float lse_self) {
  return s.joint() ? sigmoid(float(double(load(logit)) + double(lse_mem) - double(lse_self))) : sigmoid(load(logit));
}

// s[r·kKB + j] = scale · Σ_i q[r·ldq + i] · kt[i·kKB + j] for r < rows, j < nk: a tile of q·kᵀ with the key
// tile stored transposed ([d, kKB]). Four query rows at a time share each load of kt.
MG_INLINE void score_tile(const float* q, int64_t ldq, int64_t rows, const float* kt, int64_t nk, int64_t d,
                          float scale, float* s) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    float* __restrict s0 = s + r * kKB;
    float* __restrict s1 = s0 + kKB;
    float* __restrict s2 = s1 + kKB;
    float* __restrict s3 = s2 + kKB;
    for (int64_t j = 0; j < nk; j++) s0[j] = s1[j] = s2[j] = s3[j] = 0.f;
    const float* q0 = q + r * ldq;
    for (int64_t i = 0; i < d; i++) {
      const float* __restrict kr = kt + i * kKB;
      float a0 = q0[i], a1 = q0[ldq + i], a2 = q0[2 * ldq + i], a3 = q0[3 * ldq + i];
      for (int64_t j = 0; j < nk; j++) {
        float kv = kr[j];
        s0[j] += a0 * kv;
        s1[j] += a1 * kv;
        s2[j] += a2 * kv;
        s3[j] += a3 * kv;
      }
    }
  }
  for (; r < rows; r++) {
    float* __restrict s0 = s + r * kKB;
    for (int64_t j = 0; j < nk; j++) s0[j] = 0.f;
    for (int64_t i = 0; i < d; i++) {
      const float* __restrict kr = kt + i * kKB;
      float a0 = q[r * ldq + i];
      for (int64_t j = 0; j < nk; j++) s0[j] += a0 * kr[j];
    }
  }
  if (scale != 1.f) {
    for (int64_t x = 0; x < rows * kKB; x++) s[x] *= scale;
  }
}

// Copies nk rows (row j at src + j·ld, optionally rotated at position pos0 + j) into a transposed [d, kKB] float32
// tile, widening bfloat16 on the way.
template <typename T>
MG_INLINE void load_tile_t(const T* src, int64_t ld, int64_t nk, int64_t d, const RopeTable* rt, int64_t pos0,
                           float* tmp, float* tile) {
  for (int64_t j = 0; j < nk; j++) {
    const T* row = src + j * ld;
    if (rt) {
      rope_rotate(row, tmp, *rt, pos0 + j);
      for (int64_t i = 0; i < d; i++) tile[i * kKB + j] = tmp[i];
    } else {
      for (int64_t i = 0; i < d; i++) tile[i * kKB + j] = load(row + i);
    }
  }
}

// q: the block's query rows as float32 (rotated, or widened); q0: its unrotated rows widened for the memory read
// (bfloat16 with rope only); vrows: one tile of value rows widened (bfloat16 only).
// qm: the rows rotated at p + S for a positional memory read.
struct ForwardScratch {
  std::vector<float> q, q0, qm, kt, vrows, s, tmp, m, l;
  explicit ForwardScratch(int64_t d)
      : q(size_t(kQB * d)), q0(q.size()), qm(q.size()), kt(size_t(d * kKB)), vrows(kt.size()), s(size_t(kQB * kKB)),
        tmp(size_t(d)), m(kQB), l(kQB) {}
};

// Online-softmax attention of `rows` query rows (q, leading dim ldq; query r is at position qpos0 + r) over nk
// keys/values (row j at k + j·ld, v + j·ld). Causal: query p sees keys j ≤ p. Keys are rotated when rt is set.
// Writes out (rows × d, normalised) and lse (rows).
// With scores (decoding, rows = 1), the row's scaled scores over the keys are given, computed as score_tile
// computes them, and only the softmax and the values run here.
template <typename T>
MG_INLINE void attend_rows(const float* q, int64_t ldq, int64_t rows, int64_t qpos0, const T* k, const T* v,
                           int64_t ld, int64_t nk, bool causal, const RopeTable* rt, int64_t d, float scale,
                           ForwardScratch& w, float* out, float* lse, const float* scores = nullptr) {
  float* m = w.m.data();
  float* l = w.l.data();
  for (int64_t r = 0; r < rows; r++) {
    m[r] = -INFINITY;
    l[r] = 0.f;
    std::fill(out + r * d, out + (r + 1) * d, 0.f);
  }
  int64_t k_end = causal ? std::min(nk, qpos0 + rows) : nk;
  for (int64_t k0 = 0; k0 < k_end; k0 += kKB) {
    int64_t n = std::min(kKB, k_end - k0);
    if (scores) {
      std::copy(scores + k0, scores + k0 + n, w.s.data());
    } else {
      load_tile_t(k + k0 * ld, ld, n, d, rt, k0, w.tmp.data(), w.kt.data());
      score_tile(q, ldq, rows, w.kt.data(), n, d, scale, w.s.data());
    }
    int64_t ldv;
    const float* vt = widen_rows(v + k0 * ld, ld, n, d, w.vrows.data(), &ldv);
    for (int64_t r = 0; r < rows; r++) {
      int64_t valid = causal ? std::min(n, qpos0 + r - k0 + 1) : n;
      if (valid <= 0) continue;
      float* sr = w.s.data() + r * kKB;
      float mx = m[r];
      for (int64_t j = 0; j < valid; j++) mx = std::max(mx, sr[j]);
      float* o = out + r * d;
      if (mx > m[r] && m[r] != -INFINITY) {
        float corr = std::exp(m[r] - mx);
        l[r] *= corr;
        for (int64_t i = 0; i < d; i++) o[i] *= corr;
      }
      m[r] = mx;
      l[r] += exp_row(sr, valid, mx);
      accumulate_rows(sr, 1, vt, ldv, valid, o, d);
    }
  }
  for (int64_t r = 0; r < rows; r++) {
    float inv = 1.f / l[r];
    for (int64_t i = 0; i < d; i++) out[r * d + i] *= inv;
    lse[r] = m[r] + std::log(l[r]);
  }
}

// One forward task: batch b, head h, query rows [t0, t0 + rows).
template <typename T>
struct ForwardArgs {
  const Dims* s;
  const RopeTable* rt;
  const T *qkv, *mem_kv, *gate_logits;
  T* out;
  float *lse_self, *lse_mem;
  T *save_a, *save_r;
};

template <typename T>
MG_INLINE void forward_task(const ForwardArgs<T>& a, int64_t b, int64_t h, int64_t t0, ForwardScratch& w,
                            float* a_blk, float* r_blk) {
  const Dims& s = *a.s;
  const RopeTable& rt = *a.rt;
  const int64_t D = s.D(), d = s.d, rows = std::min(kQB, s.T - t0);
  const float scale = s.scale();
  const T* qsrc = a.qkv + (b * s.T + t0) * 3 * D + h * d;  // unrotated q rows, leading dim 3D
  // q0: the unrotated rows as float32, which the memory read takes; q: the rows the self part takes (rotated).
  int64_t ldq0;
  const float* q0 = widen_rows(qsrc, 3 * D, rows, d, (s.rope ? w.q0 : w.q).data(), &ldq0);
  const float* q = q0;
  int64_t ldq = ldq0;
  if (s.rope) {
    for (int64_t r = 0; r < rows; r++) rope_rotate(qsrc + r * 3 * D, w.q.data() + r * d, rt, t0 + r);
    q = w.q.data();
    ldq = d;
  }
  const T* kbase = a.qkv + b * s.T * 3 * D + D + h * d;
  const T* vbase = kbase + D;
  const int64_t lse_row = (b * s.H + h) * s.T + t0;
  attend_rows(q, ldq, rows, t0, kbase, vbase, 3 * D, s.T, true, s.rope ? &rt : nullptr, d, scale, w, a_blk,
              a.lse_self + lse_row);
  if (s.S == 0) {
    for (int64_t r = 0; r < rows; r++) store_row(a.out + (b * s.T + t0 + r) * D + h * d, a_blk + r * d, d);
    return;
  }
  const T* mk = a.mem_kv + b * s.S * 2 * D + h * d;
  if (s.mem_positions()) {
    for (int64_t r = 0; r < rows; r++) rope_rotate(qsrc + r * 3 * D, w.qm.data() + r * d, rt, t0 + r + s.S);
    attend_rows(w.qm.data(), d, rows, 0, mk, mk + D, 2 * D, s.S, false, &rt, d, scale, w, r_blk, a.lse_mem + lse_row);
  } else {
    attend_rows(q0, ldq0, rows, 0, mk, mk + D, 2 * D, s.S, false, nullptr, d, scale, w, r_blk, a.lse_mem + lse_row);
  }
  for (int64_t r = 0; r < rows; r++) {
    int64_t t = t0 + r;
    float g = gate_of(s, a.gate_logits + (b * s.T + t) * s.H + h, a.lse_mem[lse_row + r], a.lse_self[lse_row + r]);
    const float* ar = a_blk + r * d;
    const float* rr = r_blk + r * d;
    float* o = w.tmp.data();
    for (int64_t i = 0; i < d; i++) o[i] = g * rr[i] + (1.f - g) * ar[i];
    store_row(a.out + (b * s.T + t) * D + h * d, o, d);
    if (a.save_a) store_row(a.save_a + (b * s.T + t) * D + h * d, ar, d);
    if (a.save_r) store_row(a.save_r + (b * s.T + t) * D + h * d, rr, d);
  }
}

template <typename T>
MG_INLINE void forward_range(const ForwardArgs<T>& a, size_t lo, size_t hi) {
  const Dims& s = *a.s;
  ForwardScratch w(s.d);
  std::vector<float> a_blk(size_t(kQB * s.d)), r_blk(size_t(kQB * s.d));
  const int64_t blocks = (s.T + kQB - 1) / kQB;
  for (size_t task = lo; task < hi; task++) {
    int64_t qb = int64_t(task) % blocks, bh = int64_t(task) / blocks;
    forward_task(a, bh / s.H, bh % s.H, qb * kQB, w, a_blk.data(), r_blk.data());
  }
}

template <typename T>
__attribute__((target("avx2,fma"))) void forward_range_avx2(const ForwardArgs<T>& a, size_t lo, size_t hi) {
  forward_range(a, lo, hi);
}
template <typename T>
void forward_range_generic(const ForwardArgs<T>& a, size_t lo, size_t hi) {
  forward_range(a, lo, hi);
}

// ---------------------------------------------------------------- decoding

// One decoding task: sequence b, head h, the new token at row p = positions[b]. It appends the token's key (rotated
// at p, transposed) and value to the caches, then is forward_task at rows = 1: the key tiles start at 0 in steps of
// kKB as there and hold the same float32 values (a key is rotated by the same rope_rotate, once, when it arrives),
// and each score, exponential and sum runs in the same order. So it computes the full forward's row to float32
// rounding: whether the compiler contracts a loop into FMAs can differ between the forward's 4-row and this 1-row
// code (measured: bit-equal without memory, within 1e-7 with the positional memory read).
template <typename T>
struct DecodeArgs {
  const Dims* s;
  const RopeTable* rt;
  const T* qkv;
  const int32_t* positions;
  float* keys;
  T* values;
  const float* mem_keys;
  const T *mem_values, *gate_logits;
  T* out;
};

// Feature i of key t in a head's blocked keys (attention.inc: blocks of kDecodeKeyBlock keys, d rows of 8 lanes).
MG_INLINE int64_t key_at(int64_t t, int64_t i, int64_t d) {
  return ((t / kDecodeKeyBlock) * d + i) * kDecodeKeyBlock + t % kDecodeKeyBlock;
}

// Eight floats as one GCC vector (AVX2 in the AVX2 build of a task body, two SSE halves in the generic one), read
// unaligned from the blocked keys.
typedef float KeyLanes __attribute__((vector_size(32), aligned(4), __may_alias__));

// sc[j] = Σ_i q[i] · key j's feature i (in feature order, as score_tile sums), then times scale, for j < n: one
// contiguous run over the blocks, 8 keys to a vector. G blocks go side by side: a block alone is one chain of d
// dependent FMAs, latency-bound; eight are eight chains. The lanes are written as vectors: as scalar loops over an
// array, GCC vectorised them across i with permutes and spilled the accumulators, 4–6 times slower (78% of a
// batch-16 decode step's attention, perf at the small preset). bench/decode-layout.cc measures the ways, cold.
template <int G>
MG_INLINE void blocked_score_group(const float* __restrict q, const float* __restrict kb, int64_t d, float* __restrict acc) {
  KeyLanes lanes[G];
  for (int g = 0; g < G; g++) lanes[g] = KeyLanes{};
  for (int64_t i = 0; i < d; i++) {
    const float qi = q[i];
    for (int g = 0; g < G; g++) lanes[g] += qi * *reinterpret_cast<const KeyLanes*>(kb + (g * d + i) * kDecodeKeyBlock);
  }
  for (int g = 0; g < G; g++) std::memcpy(acc + g * kDecodeKeyBlock, &lanes[g], sizeof(KeyLanes));
}

MG_INLINE void blocked_scores(const float* __restrict q, const float* __restrict keys, int64_t n, int64_t d, float scale,
                              float* __restrict sc) {
  static_assert(kDecodeKeyBlock == 8, "a block of keys is one KeyLanes vector");
  const int64_t blocks = (n + kDecodeKeyBlock - 1) / kDecodeKeyBlock;
  for (int64_t blk = 0; blk < blocks;) {
    alignas(32) float acc[8 * kDecodeKeyBlock];
    const float* kb = keys + blk * d * kDecodeKeyBlock;
    const int64_t left = blocks - blk;
    const int64_t group = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
    if (group == 8) blocked_score_group<8>(q, kb, d, acc);
    else if (group == 4) blocked_score_group<4>(q, kb, d, acc);
    else if (group == 2) blocked_score_group<2>(q, kb, d, acc);
    else blocked_score_group<1>(q, kb, d, acc);
    const int64_t lanes = std::min(group * kDecodeKeyBlock, n - blk * kDecodeKeyBlock);
    for (int64_t e = 0; e < lanes; e++) sc[blk * kDecodeKeyBlock + e] = scale != 1.f ? acc[e] * scale : acc[e];
    blk += group;
  }
}

template <typename T>
MG_INLINE void decode_task(const DecodeArgs<T>& a, int64_t b, int64_t h, ForwardScratch& w, float* a_row,
                           float* r_row, float* sc) {
  const Dims& s = *a.s;
  const RopeTable& rt = *a.rt;
  const int64_t D = s.D(), d = s.d, p = a.positions[b];
  const float scale = s.scale();
  T* o = a.out + b * D + h * d;
  if (p < 0 || p >= s.T) {
    std::fill(w.tmp.begin(), w.tmp.end(), 0.f);
    store_row(o, w.tmp.data(), d);
    return;
  }
  const T* qsrc = a.qkv + b * 3 * D + h * d;
  const T* ksrc = qsrc + D;
  const T* vsrc = ksrc + D;
  const int64_t key_blocks = (s.T + kDecodeKeyBlock - 1) / kDecodeKeyBlock;
  float* kt = a.keys + (b * s.H + h) * key_blocks * d * kDecodeKeyBlock;
  if (s.rope) rope_rotate(ksrc, w.tmp.data(), rt, p);
  for (int64_t i = 0; i < d; i++) kt[key_at(p, i, d)] = s.rope ? w.tmp[size_t(i)] : load(ksrc + i);
  T* values = a.values + (b * s.H + h) * s.T * d;
  std::copy(vsrc, vsrc + d, values + p * d);
  int64_t ldq0;
  const float* q0 = widen_rows(qsrc, 3 * D, 1, d, (s.rope ? w.q0 : w.q).data(), &ldq0);
  const float* q = q0;
  int64_t ldq = ldq0;
  if (s.rope) {
    rope_rotate(qsrc, w.q.data(), rt, p);
    q = w.q.data();
    ldq = d;
  }
  // Each score sums its features in order and is scaled once, as score_tile does it, so the values are the same.
  blocked_scores(q, kt, p + 1, d, scale, sc);
  float lse_self = 0.f, lse_mem = 0.f;
  attend_rows<T>(q, ldq, 1, p, nullptr, values, d, s.T, true, nullptr, d, scale, w, a_row, &lse_self, sc);
  if (s.S == 0) {
    store_row(o, a_row, d);
    return;
  }
  // The memory read: its keys were rotated (or not) once, when the memory was written (attention_decode_memory).
  const int64_t slot_blocks = (s.S + kDecodeKeyBlock - 1) / kDecodeKeyBlock;
  const float* mk = a.mem_keys + (b * s.H + h) * slot_blocks * d * kDecodeKeyBlock;
  const T* mv = a.mem_values + (b * s.H + h) * s.S * d;
  float* msc = sc + s.T;
  if (s.mem_positions()) rope_rotate(qsrc, w.qm.data(), rt, p + s.S);
  blocked_scores(s.mem_positions() ? w.qm.data() : q0, mk, s.S, d, scale, msc);
  attend_rows<T>(nullptr, 0, 1, 0, nullptr, mv, d, s.S, false, nullptr, d, scale, w, r_row, &lse_mem, msc);
  const float g = gate_of(s, a.gate_logits + b * s.H + h, lse_mem, lse_self);
  float* mixed = w.tmp.data();
  for (int64_t i = 0; i < d; i++) mixed[i] = g * r_row[i] + (1.f - g) * a_row[i];
  store_row(o, mixed, d);
}

template <typename T>
MG_INLINE void decode_range(const DecodeArgs<T>& a, size_t lo, size_t hi) {
  const Dims& s = *a.s;
  // Kept per thread: made afresh, the 66 KB of scratch cost a third of a one-sequence step at the small preset.
  static thread_local std::unique_ptr<ForwardScratch> w;
  static thread_local std::vector<float> rows;
  if (!w || int64_t(w->tmp.size()) != s.d) w = std::make_unique<ForwardScratch>(s.d);
  rows.resize(size_t(2 * s.d + s.T + s.S));  // A, R and the scores of one row over the keys, then over the slots
  float* const r = rows.data();
  for (size_t task = lo; task < hi; task++) decode_task(a, int64_t(task) / s.H, int64_t(task) % s.H, *w, r, r + s.d, r + 2 * s.d);
}

template <typename T>
__attribute__((target("avx2,fma"))) void decode_range_avx2(const DecodeArgs<T>& a, size_t lo, size_t hi) {
  decode_range(a, lo, hi);
}
template <typename T>
void decode_range_generic(const DecodeArgs<T>& a, size_t lo, size_t hi) {
  decode_range(a, lo, hi);
}

// ---------------------------------------------------------------- backward

template <typename T>
struct BackwardArgs {
  const Dims* s;
  const RopeTable* rt;
  const T *qkv, *mem_kv, *gate_logits, *a, *r;
  const float *lse_self, *lse_mem;
  const T* d_out;
  T *d_qkv, *d_mem_kv, *d_gate;
};

// Gradient of one attention (self or memory) of head rows, recomputing the probabilities tile by tile:
// P = exp(q·kᵀ·scale − lse), dP = dY·vᵀ, dS = P ∘ (dP − Dsum), dq += dS·k·scale, dk += dSᵀ·q·scale, dv += Pᵀ·dY.
// q rows (ld ldq) at positions 0 … nq−1, key rows (ld ldk, already rotated where needed) and value rows (ld ldv)
// 0 … nk−1; dy (the gradient of this attention's output) and dsum = rowsum(dy ∘ y) are per query row.
// dq, dk, dv are [n, d] contiguous accumulators owned by this task.
MG_INLINE void attend_rows_backward(const float* q, int64_t ldq, int64_t nq, const float* k, int64_t ldk,
                                    const float* v, int64_t ldv, int64_t nk, bool causal, int64_t d, float scale, const float* dy,
                                    const float* dsum, const float* lse, float* dq, float* dk, float* dv,
                                    float* kt, float* vt, float* p, float* dp) {
  for (int64_t t0 = 0; t0 < nq; t0 += kQB) {
    int64_t rows = std::min(kQB, nq - t0);
    int64_t k_end = causal ? std::min(nk, t0 + rows) : nk;
    for (int64_t k0 = 0; k0 < k_end; k0 += kKB) {
      int64_t n = std::min(kKB, k_end - k0);
      load_tile_t(k + k0 * ldk, ldk, n, d, nullptr, 0, nullptr, kt);
      load_tile_t(v + k0 * ldv, ldv, n, d, nullptr, 0, nullptr, vt);
      score_tile(q + t0 * ldq, ldq, rows, kt, n, d, scale, p);
      score_tile(dy + t0 * d, d, rows, vt, n, d, 1.f, dp);
      for (int64_t r = 0; r < rows; r++) {
        int64_t t = t0 + r;
        int64_t valid = causal ? std::max<int64_t>(0, std::min(n, t - k0 + 1)) : n;
        float* pr = p + r * kKB;
        float* dpr = dp + r * kKB;  // becomes dS·scale
        exp_row(pr, valid, lse[t]);
        for (int64_t j = 0; j < valid; j++) dpr[j] = pr[j] * (dpr[j] - dsum[t]) * scale;
        for (int64_t j = valid; j < n; j++) pr[j] = dpr[j] = 0.f;
        float* dqr = dq + t * d;
        accumulate_rows(dpr, 1, k + k0 * ldk, ldk, valid, dqr, d);
      }
      // Key j gets nothing from the rows before it (causal: their p and dS are zero there), so its sums start
      // at the first row that sees it.
      for (int64_t j = 0; j < n; j++) {
        const int64_t r0 = causal ? std::clamp<int64_t>(k0 + j - t0, 0, rows) : 0;
        accumulate_rows(dp + r0 * kKB + j, kKB, q + (t0 + r0) * ldq, ldq, rows - r0, dk + (k0 + j) * d, d);
        accumulate_rows(p + r0 * kKB + j, kKB, dy + (t0 + r0) * d, d, rows - r0, dv + (k0 + j) * d, d);
      }
    }
  }
}

// qr, kr: a head's rotated q and k rows; qw, kw, vw, mkw, mvw: its unrotated q, k, v and memory rows widened to
// float32 (bfloat16 storage only; float32 is read in place); row_*: one row of d_out, A, R, or a gradient row.
// qm, mkr: the memory read's rotated query rows (at p + S) and slot keys (at j), for a positional memory read.
struct BackwardScratch {
  std::vector<float> qr, kr, qm, mkr, qw, kw, vw, mkw, mvw, dy_a, dy_r, sum_a, sum_r, dq, dk, dv, dq0, dmk, dmv, kt, vt,
      p, dp, row_o, row_a, row_r, row_g;
  BackwardScratch(const Dims& s, bool widen)
      : qr(s.rope ? size_t(s.T * s.d) : 0), kr(qr.size()), qm(s.mem_positions() ? size_t(s.T * s.d) : 0),
        mkr(s.mem_positions() ? size_t(s.S * s.d) : 0), qw(widen ? size_t(s.T * s.d) : 0),
        kw(widen && !s.rope ? qw.size() : 0), vw(qw.size()), mkw(widen ? size_t(s.S * s.d) : 0), mvw(mkw.size()),
        dy_a(size_t(s.T * s.d)), dy_r(s.S ? dy_a.size() : 0), sum_a(size_t(s.T)), sum_r(size_t(s.T)),
        dq(dy_a.size()), dk(dy_a.size()), dv(dy_a.size()), dq0(dy_r.size()), dmk(size_t(s.S * s.d)), dmv(dmk.size()),
        kt(size_t(s.d * kKB)), vt(kt.size()), p(size_t(kQB * kKB)), dp(p.size()), row_o(size_t(s.d)),
        row_a(row_o.size()), row_r(row_o.size()), row_g(row_o.size()) {}
};

// A free row of scratch while the memory part's gradients are stored (row_g is used only after them).
MG_INLINE float* gq_tmp(BackwardScratch& w) { return w.row_g.data(); }

// The whole backward of batch b, head h: this task alone writes that head's columns of every gradient.
template <typename T>
MG_INLINE void backward_head(const BackwardArgs<T>& a, int64_t b, int64_t h, BackwardScratch& w) {
  const Dims& s = *a.s;
  const RopeTable& rt = *a.rt;
  const int64_t T_ = s.T, S = s.S, d = s.d, D = s.D();
  const float scale = s.scale();
  const T* qsrc = a.qkv + b * T_ * 3 * D + h * d;  // rows of ld 3D
  const T* ksrc = qsrc + D;
  const T* vsrc = qsrc + 2 * D;
  // The head's rows as float32: q0 unrotated (the memory read's), q and k as the self part takes them.
  int64_t ldq0, ldv, ldq, ldk;
  const float* q0 = widen_rows(qsrc, 3 * D, T_, d, w.qw.data(), &ldq0);
  const float* v = widen_rows(vsrc, 3 * D, T_, d, w.vw.data(), &ldv);
  const float* q = q0;
  const float* k;
  ldq = ldq0;
  if (s.rope) {
    for (int64_t t = 0; t < T_; t++) {
      rope_rotate(qsrc + t * 3 * D, w.qr.data() + t * d, rt, t);
      rope_rotate(ksrc + t * 3 * D, w.kr.data() + t * d, rt, t);
    }
    q = w.qr.data();
    k = w.kr.data();
    ldq = ldk = d;
  } else {
    k = widen_rows(ksrc, 3 * D, T_, d, w.kw.data(), &ldk);
  }
  // Split dO between the two attentions; D_i terms; the gate gradient dO·(R − A)·g(1 − g).
  int64_t unused;
  for (int64_t t = 0; t < T_; t++) {
    const int64_t row = (b * T_ + t) * D + h * d;
    const float* dout = widen_rows(a.d_out + row, 0, 1, d, w.row_o.data(), &unused);
    const float* ar = widen_rows(a.a + row, 0, 1, d, w.row_a.data(), &unused);
    float* dya = w.dy_a.data() + t * d;
    if (S == 0) {
      std::copy(dout, dout + d, dya);
      w.sum_a[t] = dot(dya, ar, d);
      continue;
    }
    const int64_t gi = (b * T_ + t) * s.H + h;
    const int64_t li = (b * s.H + h) * T_ + t;
    const float g = gate_of(s, a.gate_logits + gi, a.lse_mem[li], a.lse_self[li]);
    const float* rr = widen_rows(a.r + row, 0, 1, d, w.row_r.data(), &unused);
    float* dyr = w.dy_r.data() + t * d;
    for (int64_t i = 0; i < d; i++) {
      dya[i] = (1.f - g) * dout[i];
      dyr[i] = g * dout[i];
    }
    const double diff = dot4_diff(dout, rr, ar, d);
    w.sum_a[t] = dot(dya, ar, d);
    w.sum_r[t] = dot(dyr, rr, d);
    const float dz = float(diff * g * (1.0 - g));
    store(a.d_gate + gi, dz);
    // Joint softmax: the gate's argument holds +lse_mem − lse_self, and d lse / d score is the softmax itself, so
    // each part's dS = P ∘ (dP − D_i + d lse_i) takes the gate's gradient through its D_i.
    if (s.joint()) {
      w.sum_a[t] += dz;
      w.sum_r[t] -= dz;
    }
  }
  std::fill(w.dq.begin(), w.dq.end(), 0.f);
  std::fill(w.dk.begin(), w.dk.end(), 0.f);
  std::fill(w.dv.begin(), w.dv.end(), 0.f);
  const float* lse_self = a.lse_self + (b * s.H + h) * T_;
  attend_rows_backward(q, ldq, T_, k, ldk, v, ldv, T_, true, d, scale, w.dy_a.data(), w.sum_a.data(), lse_self,
                       w.dq.data(), w.dk.data(), w.dv.data(), w.kt.data(), w.vt.data(), w.p.data(), w.dp.data());
  if (S > 0) {
    std::fill(w.dq0.begin(), w.dq0.end(), 0.f);
    std::fill(w.dmk.begin(), w.dmk.end(), 0.f);
    std::fill(w.dmv.begin(), w.dmv.end(), 0.f);
    const T* msrc = a.mem_kv + b * S * 2 * D + h * d;
    int64_t ldmk, ldmv;
    const float* mk = widen_rows(msrc, 2 * D, S, d, w.mkw.data(), &ldmk);
    const float* mv = widen_rows(msrc + D, 2 * D, S, d, w.mvw.data(), &ldmv);
    const float* qmem = q0;
    int64_t ldqm = ldq0;
    if (s.mem_positions()) {
      for (int64_t t = 0; t < T_; t++) rope_rotate(qsrc + t * 3 * D, w.qm.data() + t * d, rt, t + S);
      for (int64_t j = 0; j < S; j++) rope_rotate(msrc + j * 2 * D, w.mkr.data() + j * d, rt, j);
      qmem = w.qm.data();
      mk = w.mkr.data();
      ldqm = ldmk = d;
    }
    attend_rows_backward(qmem, ldqm, T_, mk, ldmk, mv, ldmv, S, false, d, scale, w.dy_r.data(), w.sum_r.data(),
                         a.lse_mem + (b * s.H + h) * T_, w.dq0.data(), w.dmk.data(), w.dmv.data(), w.kt.data(),
                         w.vt.data(), w.p.data(), w.dp.data());
    for (int64_t j = 0; j < S; j++) {
      T* dst = a.d_mem_kv + (b * S + j) * 2 * D + h * d;
      if (s.mem_positions()) {
        std::fill(gq_tmp(w), gq_tmp(w) + d, 0.f);
        rope_rotate_back_add(w.dmk.data() + j * d, gq_tmp(w), rt, j);
        store_row(dst, gq_tmp(w), d);
      } else {
        store_row(dst, w.dmk.data() + j * d, d);
      }
      store_row(dst + D, w.dmv.data() + j * d, d);
    }
  }
  // Each gradient row is finished in float32 (rotated back, plus the memory part), then stored once.
  float* gq = w.row_g.data();
  for (int64_t t = 0; t < T_; t++) {
    T* dst = a.d_qkv + (b * T_ + t) * 3 * D + h * d;
    const float* dq = w.dq.data() + t * d;
    const float* dk = w.dk.data() + t * d;
    if (s.rope) {
      std::fill(gq, gq + d, 0.f);
      rope_rotate_back_add(dq, gq, rt, t);
      if (S > 0 && s.mem_positions()) rope_rotate_back_add(w.dq0.data() + t * d, gq, rt, t + S);
      else if (S > 0) axpy(1.f, w.dq0.data() + t * d, gq, d);
      store_row(dst, gq, d);
      std::fill(gq, gq + d, 0.f);
      rope_rotate_back_add(dk, gq, rt, t);
      store_row(dst + D, gq, d);
    } else {
      std::copy(dq, dq + d, gq);
      if (S > 0) axpy(1.f, w.dq0.data() + t * d, gq, d);
      store_row(dst, gq, d);
      store_row(dst + D, dk, d);
    }
    store_row(dst + 2 * D, w.dv.data() + t * d, d);
  }
}

template <typename T>
MG_INLINE void backward_range(const BackwardArgs<T>& a, size_t lo, size_t hi) {
  BackwardScratch w(*a.s, !std::is_same_v<T, float>);
  for (size_t bh = lo; bh < hi; bh++) backward_head(a, int64_t(bh) / a.s->H, int64_t(bh) % a.s->H, w);
}

template <typename T>
__attribute__((target("avx2,fma"))) void backward_range_avx2(const BackwardArgs<T>& a, size_t lo, size_t hi) {
  backward_range(a, lo, hi);
}
template <typename T>
void backward_range_generic(const BackwardArgs<T>& a, size_t lo, size_t hi) {
  backward_range(a, lo, hi);
}

void check_dims(const Dims& s) {
  if (s.H < 1 || s.d < 1) fail("attention: %lld heads of width %lld", (long long)s.H, (long long)s.d);
  if (s.rope && s.d % 2) fail("attention: rope needs an even head width, got d = %lld", (long long)s.d);
}

}  // namespace

void attention_forward(DType dt, int64_t B, int64_t T, int64_t H, int64_t d, int64_t S, bool rope, int mem_mode,
                       const void* qkv, const void* mem_kv, const void* gate_logits, void* out, float* lse_self,
                       float* lse_mem, void* save_a, void* save_r) {
  const Dims s{B, T, H, d, S, rope, mem_mode};
  check_dims(s);
  dispatch_float(dt, "attention", [&](auto tag) {
    using E = decltype(tag);
    if (B == 0 || T == 0) return;
    const RopeTable& rt = rope_table(s);
    const ForwardArgs<E> a{&s,
                           &rt,
                           static_cast<const E*>(qkv),
                           static_cast<const E*>(mem_kv),
                           static_cast<const E*>(gate_logits),
                           static_cast<E*>(out),
                           lse_self,
                           lse_mem,
                           static_cast<E*>(save_a),
                           static_cast<E*>(save_r)};
    const size_t tasks = size_t(B * H * ((T + kQB - 1) / kQB));
    const bool avx2 = has_avx2();
    parallel_for(0, tasks, 1, [&](size_t lo, size_t hi) {
      if (avx2) forward_range_avx2(a, lo, hi);
      else forward_range_generic(a, lo, hi);
    });
  });
}

void attention_decode(DType dt, int64_t B, int64_t T, int64_t H, int64_t d, int64_t S, bool rope, int mem_mode,
                      const void* qkv, const int32_t* positions, float* keys, void* values, const float* mem_keys,
                      const void* mem_values, const void* gate_logits, void* out) {
  const Dims s{B, T, H, d, S, rope, mem_mode};
  check_dims(s);
  dispatch_float(dt, "attention_decode", [&](auto tag) {
    using E = decltype(tag);
    if (B == 0) return;
    const RopeTable& rt = rope_table(s);
    const DecodeArgs<E> a{&s, &rt, static_cast<const E*>(qkv), positions, keys, static_cast<E*>(values), mem_keys,
                          static_cast<const E*>(mem_values), static_cast<const E*>(gate_logits), static_cast<E*>(out)};
    const bool avx2 = has_avx2();
    parallel_for(0, size_t(B * H), 1, [&](size_t lo, size_t hi) {
      if (avx2) decode_range_avx2(a, lo, hi);
      else decode_range_generic(a, lo, hi);
    });
  });
}

void attention_decode_memory(DType dt, int64_t B, int64_t S, int64_t H, int64_t d, bool rope, int mem_mode,
                             const void* mem_kv, float* mem_keys, void* mem_values) {
  const Dims s{B, 0, H, d, S, rope, mem_mode};
  check_dims(s);
  dispatch_float(dt, "attention_decode_memory", [&](auto tag) {
    using E = decltype(tag);
    if (B == 0 || S == 0) return;
    const RopeTable& rt = rope_table(s);  // rows 0 … S − 1 (T = 0): slot j at position j
    const int64_t D = s.D(), slot_blocks = (S + kDecodeKeyBlock - 1) / kDecodeKeyBlock;
    const E* kv = static_cast<const E*>(mem_kv);
    E* values = static_cast<E*>(mem_values);
    parallel_for(0, size_t(B * H), 1, [&](size_t lo, size_t hi) {
      std::vector<float> row(static_cast<size_t>(d));
      for (size_t task = lo; task < hi; task++) {
        const int64_t b = int64_t(task) / H, h = int64_t(task) % H;
        float* keys = mem_keys + int64_t(task) * slot_blocks * d * kDecodeKeyBlock;
        // Lanes past S in the last block stay as they are: blocked_scores computes them but keeps only n scores.
        for (int64_t j = 0; j < S; j++) {
          const E* src = kv + (b * S + j) * 2 * D + h * d;
          if (s.mem_positions()) rope_rotate(src, row.data(), rt, j);
          else for (int64_t i = 0; i < d; i++) row[size_t(i)] = load(src + i);
          for (int64_t i = 0; i < d; i++) keys[key_at(j, i, d)] = row[size_t(i)];
          std::copy(src + D, src + D + d, values + (int64_t(task) * S + j) * d);
        }
      }
    });
  });
}

void attention_backward(DType dt, int64_t B, int64_t T, int64_t H, int64_t d, int64_t S, bool rope, int mem_mode,
                        const void* qkv, const void* mem_kv, const void* gate_logits, const void* a_saved,
                        const void* r_saved, const float* lse_self, const float* lse_mem, const void* d_out,
                        void* d_qkv, void* d_mem_kv, void* d_gate_logits) {
  const Dims s{B, T, H, d, S, rope, mem_mode};
  check_dims(s);
  dispatch_float(dt, "attention", [&](auto tag) {
    using E = decltype(tag);
    if (B == 0) return;
    if (T == 0) {  // the memory gets no gradient from an empty segment (+0 is all-zero bits in either dtype)
      if (S) std::memset(d_mem_kv, 0, size_t(B * S * 2 * H * d) * sizeof(E));
      return;
    }
    const RopeTable& rt = rope_table(s);
    const BackwardArgs<E> a{&s,
                            &rt,
                            static_cast<const E*>(qkv),
                            static_cast<const E*>(mem_kv),
                            static_cast<const E*>(gate_logits),
                            static_cast<const E*>(a_saved),
                            static_cast<const E*>(r_saved),
                            lse_self,
                            lse_mem,
                            static_cast<const E*>(d_out),
                            static_cast<E*>(d_qkv),
                            static_cast<E*>(d_mem_kv),
                            static_cast<E*>(d_gate_logits)};
    const bool avx2 = has_avx2();
    parallel_for(0, size_t(B * H), 1, [&](size_t lo, size_t hi) {
      if (avx2) backward_range_avx2(a, lo, hi);
      else backward_range_generic(a, lo, hi);
    });
  });
}

}  // namespace mg::cpu
