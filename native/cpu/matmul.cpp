// Batched GEMM on the CPU, in the manner of BLIS/GotoBLAS: B is packed into
// KC x NR slivers shared by all threads, each thread packs an MC x KC block of
// A into MR-row slivers, and a register-blocked micro-kernel (6 x 16 floats in
// 12 AVX2 registers) runs over them. AVX2+FMA is chosen at run time, so the
// addon is built for plain x86-64 and still runs on CPUs without it.
// An optional tile epilogue (matmul_f32_epilogue, used by the linear layers for
// bias and GELU) runs on each finished C tile while it is still in L1.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../common/threadpool.h"
#include "elem.h"
#include "isa.h"
#include "kernels.h"

namespace mg::cpu {

// Called on each finished tile of C: rows [row, row + rows) x cols [col, col + cols), at c with leading dim ldc.
using TileEpilogue = void (*)(void* ctx, float* c, int64_t ldc, int64_t row, int64_t col, int64_t rows, int64_t cols);

namespace {

struct Epilogue {
  TileEpilogue fn;
  void* ctx;
};

constexpr int MR = 6, NR = 16;
constexpr int64_t KC = 256;   // A sliver (6 x 256 floats = 6 KiB) and B sliver (16 KiB) stay in L1/L2
constexpr int64_t MC = 120;   // A block: 120 KiB, in L2
constexpr int64_t NC = 3072;  // B panel: 3 MiB, in L3

// Element (row, col) of op(X), where X is stored row-major with leading dimension ld.
template <typename T>
struct View {
  const T* p;
  int64_t ld;
  bool trans;
  float at(int64_t r, int64_t c) const { return load(trans ? p + c * ld + r : p + r * ld + c); }
};

// Packs rows [i0, i0+mc) x cols [k0, k0+kc) of op(A) into MR-row slivers, zero-padded. Full slivers take
// branch-free loops over the stored layout (rows of A, or of Aᵀ, read contiguously): at the small shapes of the
// memory path, the generic element-by-element version cost as much as the GEMM itself.
template <typename T>
void pack_a(const View<T>& a, int64_t m, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  for (int64_t s = 0; s < mc; s += MR) {
    if (s + MR <= mc && i0 + s + MR <= m) {
      const int64_t i = i0 + s;
      if (a.trans) {  // op(A)[i, k] = A[k, i]: the sliver's MR values of each k are contiguous
        for (int64_t kk = 0; kk < kc; kk++) {
          const T* src = a.p + (k0 + kk) * a.ld + i;
          for (int r = 0; r < MR; r++) dst[r] = load(src + r);
          dst += MR;
        }
      } else {
        const T* rows[MR];
        for (int r = 0; r < MR; r++) rows[r] = a.p + (i + r) * a.ld + k0;
        for (int64_t kk = 0; kk < kc; kk++) {
          for (int r = 0; r < MR; r++) dst[r] = load(rows[r] + kk);
          dst += MR;
        }
      }
      continue;
    }
    for (int64_t kk = 0; kk < kc; kk++) {
      for (int r = 0; r < MR; r++) {
        int64_t i = i0 + s + r;
        *dst++ = (s + r < mc && i < m) ? a.at(i, k0 + kk) : 0.f;
      }
    }
  }
}

// Packs rows [k0, k0+kc) x cols [j0, j0+nc) of op(B) into NR-column slivers, zero-padded.
template <typename T>
void pack_b_sliver(const View<T>& b, int64_t n, int64_t k0, int64_t kc, int64_t j, float* dst) {
  int64_t width = std::min<int64_t>(NR, n - j);
  if (width == NR && b.trans) {  // op(B)[k, j] = B[j, k]: each of the NR columns is a contiguous row of B
    for (int c = 0; c < NR; c++) {
      const T* src = b.p + (j + c) * b.ld + k0;
      for (int64_t kk = 0; kk < kc; kk++) dst[kk * NR + c] = load(src + kk);
    }
    return;
  }
  for (int64_t kk = 0; kk < kc; kk++) {
    if (!b.trans && width == NR) {
      if constexpr (sizeof(T) == 4) std::memcpy(dst, reinterpret_cast<const float*>(b.p) + (k0 + kk) * b.ld + j, NR * 4);
      else for (int c = 0; c < NR; c++) dst[c] = load(b.p + (k0 + kk) * b.ld + j + c);
    } else {
      for (int c = 0; c < NR; c++) dst[c] = c < width ? b.at(k0 + kk, j + c) : 0.f;
    }
    dst += NR;
  }
}

// Writes an MR x NR tile of results into C (only the mr x nr valid part), as acc + beta * C.
inline void store_tile(const float* tile, float* c, int64_t ldc, float beta, int mr, int nr) {
  for (int i = 0; i < mr; i++) {
    for (int j = 0; j < nr; j++) {
      float v = tile[i * NR + j];
      c[i * ldc + j] = beta == 0.f ? v : v + beta * c[i * ldc + j];
    }
  }
}

void kernel_generic(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float beta, int mr, int nr) {
  float acc[MR * NR] = {};
  for (int64_t kk = 0; kk < kc; kk++, a += MR, b += NR) {
    for (int i = 0; i < MR; i++) {
      for (int j = 0; j < NR; j++) acc[i * NR + j] += a[i] * b[j];
    }
  }
  store_tile(acc, c, ldc, beta, mr, nr);
}

__attribute__((target("avx2,fma"))) void kernel_avx2(int64_t kc, const float* a, const float* b, float* c,
                                                     int64_t ldc, float beta, int mr, int nr) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t kk = 0; kk < kc; kk++, a += MR, b += NR) {
    __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    __m256 x = _mm256_broadcast_ss(a + 0);
    c00 = _mm256_fmadd_ps(x, b0, c00), c01 = _mm256_fmadd_ps(x, b1, c01);
    x = _mm256_broadcast_ss(a + 1);
    c10 = _mm256_fmadd_ps(x, b0, c10), c11 = _mm256_fmadd_ps(x, b1, c11);
    x = _mm256_broadcast_ss(a + 2);
    c20 = _mm256_fmadd_ps(x, b0, c20), c21 = _mm256_fmadd_ps(x, b1, c21);
    x = _mm256_broadcast_ss(a + 3);
    c30 = _mm256_fmadd_ps(x, b0, c30), c31 = _mm256_fmadd_ps(x, b1, c31);
    x = _mm256_broadcast_ss(a + 4);
    c40 = _mm256_fmadd_ps(x, b0, c40), c41 = _mm256_fmadd_ps(x, b1, c41);
    x = _mm256_broadcast_ss(a + 5);
    c50 = _mm256_fmadd_ps(x, b0, c50), c51 = _mm256_fmadd_ps(x, b1, c51);
  }
  const __m256 rows[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  if (mr == MR && nr == NR) {
    __m256 vb = _mm256_set1_ps(beta);
    for (int i = 0; i < MR; i++) {
      float* ci = c + i * ldc;
      for (int h = 0; h < 2; h++) {
        __m256 v = rows[i][h];
        if (beta != 0.f) v = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci + 8 * h), v);
        _mm256_storeu_ps(ci + 8 * h, v);
      }
    }
    return;
  }
  alignas(32) float tile[MR * NR];
  for (int i = 0; i < MR; i++) {
    _mm256_store_ps(tile + i * NR, rows[i][0]);
    _mm256_store_ps(tile + i * NR + 8, rows[i][1]);
  }
  store_tile(tile, c, ldc, beta, mr, nr);
}

using Kernel = void (*)(int64_t, const float*, const float*, float*, int64_t, float, int, int);

const Kernel kernel = has_avx2() ? kernel_avx2 : kernel_generic;

// ---- narrow GEMMs: no packing. The blocked path packs both operands into 6 x 16 micro-panels, which for a
// product with a handful of columns (a layer's read-gate logits: n = heads) costs more than the arithmetic.
// Here each row of C is computed directly from the stored rows — a dot product
// per element for op(B) = Wᵀ (the linear forward), a row update per k otherwise — by one thread, in a fixed
// order: results do not depend on the thread count.

// Fewer columns than one micro-panel: the blocked path would pad every 16-wide sliver with zeros (measured at the
// tiny preset's read-gate logits, n = 2: 118 µs blocked, 32 µs here). Wider products stay blocked: a dot product
// per element loses to the 6 x 16 register tile already at n = 64.
inline bool use_small_gemm(int64_t m, int64_t n, int64_t k) { return n < NR || (m <= 2 * MR && m * n * k <= (int64_t(1) << 17)); }

inline float dot_generic(const float* x, const float* y, int64_t n) {
  float acc = 0.f;
  for (int64_t i = 0; i < n; i++) acc += x[i] * y[i];
  return acc;
}

__attribute__((target("avx2,fma"))) inline float dot_avx2(const float* x, const float* y, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  for (; i < n; i++) sum += x[i] * y[i];
  return sum;
}

inline void axpy_generic(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

__attribute__((target("avx2,fma"))) inline void axpy_avx2(float alpha, const float* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += alpha * x[i];
}

// Rows [lo, hi) of C = op(A) op(B) + beta C for float32 operands (op(A) = Aᵀ and op(B) = Bᵀ not both).
template <bool kAvx>
void small_gemm_rows(const View<float>& a, const View<float>& b, float* c, int64_t n, int64_t k, float beta,
                     int64_t lo, int64_t hi, float* row) {
  for (int64_t i = lo; i < hi; i++) {
    float* ci = c + i * n;
    if (!a.trans && b.trans) {
      // C[i, j] = A_i · B_j: both rows contiguous in k.
      const float* ai = a.p + i * a.ld;
      for (int64_t j = 0; j < n; j++) {
        float v = kAvx ? dot_avx2(ai, b.p + j * b.ld, k) : dot_generic(ai, b.p + j * b.ld, k);
        ci[j] = beta == 0.f ? v : v + beta * ci[j];
      }
      continue;
    }
    // C[i, :] = Σ_k op(A)[i, k] · B[k, :], B's rows contiguous in n.
    std::fill(row, row + n, 0.f);
    for (int64_t kk = 0; kk < k; kk++) {
      const float alpha = a.trans ? a.p[kk * a.ld + i] : a.p[i * a.ld + kk];
      if (kAvx) axpy_avx2(alpha, b.p + kk * b.ld, row, n);
      else axpy_generic(alpha, b.p + kk * b.ld, row, n);
    }
    for (int64_t j = 0; j < n; j++) ci[j] = beta == 0.f ? row[j] : row[j] + beta * ci[j];
  }
}

__attribute__((target("avx2,fma"))) void small_gemm_rows_avx2(const View<float>& a, const View<float>& b, float* c,
                                                              int64_t n, int64_t k, float beta, int64_t lo, int64_t hi,
                                                              float* row) {
  small_gemm_rows<true>(a, b, c, n, k, beta, lo, hi, row);
}

const bool kSmallAvx2 = has_avx2();

void small_gemm(const View<float>& a, const View<float>& b, float* c, int64_t m, int64_t n, int64_t k, float beta,
                const Epilogue* epilogue) {
  // Rows per task: about 64k multiply-adds each.
  const size_t grain = size_t(std::max<int64_t>(1, 65536 / std::max<int64_t>(1, n * k)));
  parallel_for(0, size_t(m), grain, [&](size_t lo, size_t hi) {
    static thread_local std::vector<float> row_storage;
    row_storage.resize(size_t(n));
    if (kSmallAvx2) small_gemm_rows_avx2(a, b, c, n, k, beta, int64_t(lo), int64_t(hi), row_storage.data());
    else small_gemm_rows<false>(a, b, c, n, k, beta, int64_t(lo), int64_t(hi), row_storage.data());
    if (epilogue) epilogue->fn(epilogue->ctx, c + int64_t(lo) * n, n, int64_t(lo), 0, int64_t(hi - lo), n);
  });
}

// ---- matrix-vector products: C = A·Bᵀ for a few rows of A (decoding: one row a sequence). Packing B — a
// whole weight matrix — for a handful of rows cost more than the products (a [1, 1024] x [1024, 256]ᵀ linear: 394
// µs, 0.7 GFLOP/s). Here B is read once from where it is stored, NCOL rows side by side, each used by up to 3 rows
// of A, with NCOL·R independent accumulators; the next NCOL rows are prefetched while these compute (rows of 1 KB
// are too short for the hardware prefetcher to ramp up on its own). Measured on 12 MB of weights, one thread:
// 20–28 GB/s, against 12–20 GB/s reading the rows one after another and 2.5–4.5 GB/s through the packed GEMM.
// Tasks are blocks of 64 B rows (output columns), each output computed by one task in a fixed order: results do not
// depend on the thread count.
constexpr int64_t kGemvRows = 16;
constexpr int64_t kGemvCols = 64;

// The R·NCOL horizontal sums of a tile's accumulators into sums[r·NCOL + j], eight at a time through a tree of
// hadds (a sum each cost as much as a quarter of the k loop at k = 256).
template <int R, int NCOL>
__attribute__((target("avx2,fma"))) inline void horizontal_sums(const __m256 (&acc)[R][NCOL], float* sums) {
  for (int g = 0; g < R * NCOL; g += 8) {
    __m256 v[8];
    for (int e = 0; e < 8; e++) v[e] = g + e < R * NCOL ? acc[(g + e) / NCOL][(g + e) % NCOL] : _mm256_setzero_ps();
    const __m256 h01 = _mm256_hadd_ps(v[0], v[1]), h23 = _mm256_hadd_ps(v[2], v[3]);
    const __m256 h45 = _mm256_hadd_ps(v[4], v[5]), h67 = _mm256_hadd_ps(v[6], v[7]);
    const __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
    // h0123 holds (v0, v1, v2, v3) summed over lanes 0–3 in its low half and over lanes 4–7 in its high half.
    const __m256 lo = _mm256_permute2f128_ps(h0123, h4567, 0x20), hi = _mm256_permute2f128_ps(h0123, h4567, 0x31);
    _mm256_store_ps(sums + g, _mm256_add_ps(lo, hi));
  }
}

// The end of a GEMV tile: each output is its vector sum (sums[r·NCOL + j]) plus the products of elements [i, k) the
// vector loop left, one by one from the stored rows, stored as sum + beta·C.
template <int R, int NCOL, typename T>
inline void finish_tile(const float* sums, const T* a, int64_t lda, const T* b, int64_t ldb, int64_t i, int64_t k,
                        float* c, int64_t ldc, float beta) {
  for (int r = 0; r < R; r++) {
    for (int j = 0; j < NCOL; j++) {
      float sum = sums[r * NCOL + j];
      for (int64_t t = i; t < k; t++) sum += load(a + r * lda + t) * load(b + j * ldb + t);
      float* out = c + r * ldc + j;
      *out = beta == 0.f ? sum : sum + beta * *out;
    }
  }
}

template <int R, int NCOL>
__attribute__((target("avx2,fma"))) inline void gemv_tile_avx2(const float* a, int64_t lda, const float* b, int64_t ldb,
                                                               int64_t k, float* c, int64_t ldc, float beta) {
  __m256 acc[R][NCOL];
  for (int r = 0; r < R; r++)
    for (int j = 0; j < NCOL; j++) acc[r][j] = _mm256_setzero_ps();
  // The next tile's rows follow these in memory when B's rows are packed (ldb = k): the NCOL·8 elements an
  // iteration reads are kLines cache lines.
  constexpr int kLines = (8 * NCOL * 4 + 63) / 64;
  const char* ahead = reinterpret_cast<const char*>(b + NCOL * ldb);
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    if (ldb == k) {
      for (int line = 0; line < kLines; line++) _mm_prefetch(ahead + ((i / 8) * kLines + line) * 64, _MM_HINT_T0);
    }
    __m256 x[R];
    for (int r = 0; r < R; r++) x[r] = _mm256_loadu_ps(a + r * lda + i);
    for (int j = 0; j < NCOL; j++) {
      const __m256 w = _mm256_loadu_ps(b + j * ldb + i);
      for (int r = 0; r < R; r++) acc[r][j] = _mm256_fmadd_ps(x[r], w, acc[r][j]);
    }
  }
  alignas(32) float sums[((R * NCOL + 7) / 8) * 8];
  horizontal_sums<R, NCOL>(acc, sums);
  finish_tile<R, NCOL>(sums, a, lda, b, ldb, i, k, c, ldc, beta);
}

// Columns [j0, j1) of rows [r0, r0 + R) of C, NCOL columns at a time, then one at a time.
template <int R, int NCOL>
__attribute__((target("avx2,fma"))) void gemv_rows_avx2(const View<float>& a, const View<float>& b, float* c, int64_t n,
                                                        int64_t k, float beta, int64_t r0, int64_t j0, int64_t j1) {
  const float* ar = a.p + r0 * a.ld;
  int64_t j = j0;
  for (; j + NCOL <= j1; j += NCOL) gemv_tile_avx2<R, NCOL>(ar, a.ld, b.p + j * b.ld, b.ld, k, c + r0 * n + j, n, beta);
  for (; j < j1; j++) gemv_tile_avx2<R, 1>(ar, a.ld, b.p + j * b.ld, b.ld, k, c + r0 * n + j, n, beta);
}

// bfloat16 B without shuffles: 16 elements (32 bytes) at a time, a 32-bit lane holding element 2j in its low half
// and 2j + 1 in its high half, so a shift left by 16 gives the even elements as float32 and a mask of the high half
// the odd ones: one load and two ALU operations for 16 weights, where widening 8 at a time (vpmovzxwd, shift)
// spends a shuffle on every 8 and left the one-row GEMV at half the bandwidth of float32's. A's rows are widened
// once per GEMV into xs in the same order (each 16: the 8 even elements, then the 8 odd). The last k % 16
// elements are summed one by one from the stored rows.
template <int R, int NCOL>
__attribute__((target("avx2,fma"))) inline void gemv_tile_bf16_avx2(const float* xs, int64_t ldx, const uint16_t* a,
                                                                    int64_t lda, const uint16_t* b, int64_t ldb,
                                                                    int64_t k, float* c, int64_t ldc, float beta) {
  __m256 acc[R][NCOL];
  for (int r = 0; r < R; r++)
    for (int j = 0; j < NCOL; j++) acc[r][j] = _mm256_setzero_ps();
  constexpr int kLines = (16 * NCOL * 2 + 63) / 64;
  const char* ahead = reinterpret_cast<const char*>(b + NCOL * ldb);
  const __m256i odd_mask = _mm256_set1_epi32(int32_t(0xFFFF0000u));
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    if (ldb == k) {
      for (int line = 0; line < kLines; line++) _mm_prefetch(ahead + ((i / 16) * kLines + line) * 64, _MM_HINT_T0);
    }
    __m256 even[R], odd[R];
    for (int r = 0; r < R; r++) {
      even[r] = _mm256_loadu_ps(xs + r * ldx + i);
      odd[r] = _mm256_loadu_ps(xs + r * ldx + i + 8);
    }
    for (int j = 0; j < NCOL; j++) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + j * ldb + i));
      const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
      const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(w, odd_mask));
      for (int r = 0; r < R; r++) acc[r][j] = _mm256_fmadd_ps(odd[r], wo, _mm256_fmadd_ps(even[r], we, acc[r][j]));
    }
  }
  alignas(32) float sums[((R * NCOL + 7) / 8) * 8];
  horizontal_sums<R, NCOL>(acc, sums);
  finish_tile<R, NCOL>(sums, a, lda, b, ldb, i, k, c, ldc, beta);
}

// bfloat16 with AVX-512 BF16 (Zen 4, Intel Cooper Lake and later): vdpbf16ps multiplies 32 bf16 pairs and adds each
// pair's two products into one of 16 float32 lanes, so A and B are both read as stored, 32 elements a load, at twice
// the multiply-adds of float32 FMAs an instruction. Each product of two bf16 values is exact in float32 and each add
// rounds to nearest even as an FMA does; the instruction flushes denormal inputs and results to zero (below 1e-38).
// MEMGPT_CPU_ISA=avx2 keeps the AVX2 path where this one exists, so that tests run both.
const bool kBf16Dot = has_bf16_dot();

// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm256_undefined_* (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <int R, int NCOL>
__attribute__((target("avx2,fma,avx512f,avx512dq,avx512bf16"))) inline void gemv_tile_dpbf16(const uint16_t* a, int64_t lda,
                                                                           const uint16_t* b, int64_t ldb, int64_t k,
                                                                           float* c, int64_t ldc, float beta) {
  __m512 acc[R][NCOL];
  for (int r = 0; r < R; r++)
    for (int j = 0; j < NCOL; j++) acc[r][j] = _mm512_setzero_ps();
  const char* ahead = reinterpret_cast<const char*>(b + NCOL * ldb);
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    if (ldb == k) {
      for (int line = 0; line < NCOL; line++) _mm_prefetch(ahead + ((i / 32) * NCOL + line) * 64, _MM_HINT_T0);
    }
    __m512bh x[R];
    for (int r = 0; r < R; r++) x[r] = (__m512bh)_mm512_loadu_si512(a + r * lda + i);
    for (int j = 0; j < NCOL; j++) {
      const __m512bh w = (__m512bh)_mm512_loadu_si512(b + j * ldb + i);
      for (int r = 0; r < R; r++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], x[r], w);
    }
  }
  // Each 16-lane sum folded to 8 lanes, then the hadd tree of the AVX2 tiles: at k = 256 the loop above is 8
  // iterations, and a sum reduced on its own cost about as much.
  __m256 halves[R][NCOL];
  for (int r = 0; r < R; r++)
    for (int j = 0; j < NCOL; j++)
      halves[r][j] = _mm256_add_ps(_mm512_castps512_ps256(acc[r][j]), _mm512_extractf32x8_ps(acc[r][j], 1));
  alignas(32) float sums[((R * NCOL + 7) / 8) * 8];
  horizontal_sums<R, NCOL>(halves, sums);
  finish_tile<R, NCOL>(sums, a, lda, b, ldb, i, k, c, ldc, beta);
}

// Columns [j0, j1) of rows [r0, r0 + R) of C through gemv_tile_dpbf16, NCOL columns at a time, then one at a time.
template <int R, int NCOL>
__attribute__((target("avx2,fma,avx512f,avx512dq,avx512bf16"))) void gemv_rows_dpbf16(const View<uint16_t>& a, const View<uint16_t>& b,
                                                                     float* c, int64_t n, int64_t k, float beta,
                                                                     int64_t r0, int64_t j0, int64_t j1) {
  const uint16_t* ar = a.p + r0 * a.ld;
  int64_t j = j0;
  for (; j + NCOL <= j1; j += NCOL) gemv_tile_dpbf16<R, NCOL>(ar, a.ld, b.p + j * b.ld, b.ld, k, c + r0 * n + j, n, beta);
  for (; j < j1; j++) gemv_tile_dpbf16<R, 1>(ar, a.ld, b.p + j * b.ld, b.ld, k, c + r0 * n + j, n, beta);
}
#pragma GCC diagnostic pop

// Rows [0, m) of A (bfloat16) widened into xs [m, k16] in gemv_tile_bf16_avx2's order, for k16 = k rounded down to 16.
inline void widen_even_odd(const uint16_t* a, int64_t lda, int64_t m, int64_t k16, float* xs) {
  for (int64_t r = 0; r < m; r++) {
    const uint16_t* row = a + r * lda;
    float* out = xs + r * k16;
    for (int64_t i = 0; i < k16; i += 16) {
      for (int e = 0; e < 8; e++) {
        out[i + e] = bf16_to_f32(row[i + 2 * e]);
        out[i + 8 + e] = bf16_to_f32(row[i + 2 * e + 1]);
      }
    }
  }
}

// Columns [j0, j1) of rows [r0, r0 + R) of C for bfloat16 operands, NCOL columns at a time, then one at a time.
template <int R, int NCOL>
__attribute__((target("avx2,fma"))) void gemv_rows_bf16_avx2(const float* xs, int64_t k16, const View<uint16_t>& a,
                                                             const View<uint16_t>& b, float* c, int64_t n, int64_t k,
                                                             float beta, int64_t r0, int64_t j0, int64_t j1) {
  const float* xr = xs + r0 * k16;
  const uint16_t* ar = a.p + r0 * a.ld;
  int64_t j = j0;
  for (; j + NCOL <= j1; j += NCOL)
    gemv_tile_bf16_avx2<R, NCOL>(xr, k16, ar, a.ld, b.p + j * b.ld, b.ld, k, c + r0 * n + j, n, beta);
  for (; j < j1; j++) gemv_tile_bf16_avx2<R, 1>(xr, k16, ar, a.ld, b.p + j * b.ld, b.ld, k, c + r0 * n + j, n, beta);
}

// The GEMV's tasks: blocks of kGemvCols output columns, each computed for all m rows by rows(j0, j1) and then
// handed to the epilogue.
template <typename Rows>
void gemv_column_blocks(int64_t m, int64_t n, float* c, const Epilogue* epilogue, const Rows& rows) {
  parallel_for(0, size_t((n + kGemvCols - 1) / kGemvCols), 1, [&](size_t lo, size_t hi) {
    for (size_t blk = lo; blk < hi; blk++) {
      const int64_t j0 = int64_t(blk) * kGemvCols, j1 = std::min(n, j0 + kGemvCols);
      rows(j0, j1);
      if (epilogue) epilogue->fn(epilogue->ctx, c + j0, n, 0, j0, m, j1 - j0);
    }
  });
}

// float32 or bfloat16 operands (a bfloat16 model decoding: its weights are read at half the bytes).
template <typename T>
void gemv(const View<T>& a, const View<T>& b, float* c, int64_t m, int64_t n, int64_t k, float beta,
          const Epilogue* epilogue) {
  if constexpr (std::is_same_v<T, uint16_t>) {
    if (kBf16Dot) {
      gemv_column_blocks(m, n, c, epilogue, [&](int64_t j0, int64_t j1) {
        int64_t r = 0;
        for (; r + 4 <= m; r += 4) gemv_rows_dpbf16<4, 4>(a, b, c, n, k, beta, r, j0, j1);
        if (m - r == 3) gemv_rows_dpbf16<3, 4>(a, b, c, n, k, beta, r, j0, j1);
        else if (m - r == 2) gemv_rows_dpbf16<2, 8>(a, b, c, n, k, beta, r, j0, j1);
        else if (m - r == 1) gemv_rows_dpbf16<1, 8>(a, b, c, n, k, beta, r, j0, j1);
      });
      return;
    }
    // Two rows to a tile, not three: the even and odd halves of A take two registers a row.
    const int64_t k16 = k / 16 * 16;
    static thread_local std::vector<float> xs_storage;
    xs_storage.resize(size_t(m * k16));
    widen_even_odd(a.p, a.ld, m, k16, xs_storage.data());
    const float* xs = xs_storage.data();
    gemv_column_blocks(m, n, c, epilogue, [&](int64_t j0, int64_t j1) {
      int64_t r = 0;
      for (; r + 2 <= m; r += 2) gemv_rows_bf16_avx2<2, 4>(xs, k16, a, b, c, n, k, beta, r, j0, j1);
      if (r < m) gemv_rows_bf16_avx2<1, 8>(xs, k16, a, b, c, n, k, beta, r, j0, j1);
    });
  } else {
    gemv_column_blocks(m, n, c, epilogue, [&](int64_t j0, int64_t j1) {
      int64_t r = 0;
      for (; r + 3 <= m; r += 3) gemv_rows_avx2<3, 4>(a, b, c, n, k, beta, r, j0, j1);
      if (m - r == 2) gemv_rows_avx2<2, 6>(a, b, c, n, k, beta, r, j0, j1);
      else if (m - r == 1) gemv_rows_avx2<1, 8>(a, b, c, n, k, beta, r, j0, j1);
    });
  }
}

// One GEMM, float32 C: C = op(A) op(B) + beta C. Threads split the M x N plane of each panel.
template <typename T>
void gemm(const View<T>& a, const View<T>& b, float* c, int64_t m, int64_t n, int64_t k, float beta,
          const Epilogue* epilogue = nullptr) {
  // float32 products narrower than a micro-panel go to small_gemm below; bfloat16 has no such path, so the GEMV
  // takes them too (a one-row [1, 256] · [4, 256]ᵀ gate: 3.2 µs through the packed GEMM, ~1 µs here).
  if (k > 0 && m <= kGemvRows && !a.trans && b.trans && (n >= NR || std::is_same_v<T, uint16_t>) && kSmallAvx2) {
    gemv(a, b, c, m, n, k, beta, epilogue);
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (k > 0 && !(a.trans && b.trans) && use_small_gemm(m, n, k)) {
      small_gemm(a, b, c, m, n, k, beta, epilogue);
      return;
    }
  }
  if (k == 0) {
    for (int64_t i = 0; i < m * n; i++) c[i] = beta == 0.f ? 0.f : beta * c[i];
    if (epilogue) epilogue->fn(epilogue->ctx, c, n, 0, 0, m, n);
    return;
  }
  static thread_local std::vector<float> b_pack_storage;
  int threads = num_threads();
  for (int64_t jc = 0; jc < n; jc += NC) {
    int64_t nc = std::min(NC, n - jc);
    int64_t slivers = (nc + NR - 1) / NR;
    for (int64_t pc = 0; pc < k; pc += KC) {
      int64_t kc = std::min(KC, k - pc);
      float beta_here = pc == 0 ? beta : 1.f;
      const Epilogue* tile_epilogue = pc + kc == k ? epilogue : nullptr;  // only once a tile is finished
      b_pack_storage.resize(size_t(slivers * NR * kc));
      float* b_pack = b_pack_storage.data();
      parallel_for(0, slivers, 8, [&](size_t lo, size_t hi) {
        for (size_t s = lo; s < hi; s++) pack_b_sliver(b, n, pc, kc, jc + int64_t(s) * NR, b_pack + s * NR * kc);
      });
      // Tasks are MC-row blocks, split along N too when there are too few blocks to feed every thread.
      int64_t m_blocks = (m + MC - 1) / MC;
      int64_t n_splits = std::max<int64_t>(1, std::min<int64_t>(slivers, (2 * threads + m_blocks - 1) / m_blocks));
      int64_t slivers_per_task = (slivers + n_splits - 1) / n_splits;
      parallel_for(0, m_blocks * n_splits, 1, [&](size_t lo, size_t hi) {
        static thread_local std::vector<float> a_pack_storage;
        a_pack_storage.resize(size_t(MC * KC));
        float* a_pack = a_pack_storage.data();
        int64_t packed_block = -1;
        for (size_t t = lo; t < hi; t++) {
          int64_t ib = int64_t(t) / n_splits, js = int64_t(t) % n_splits;
          int64_t i0 = ib * MC, mc = std::min(MC, m - i0);
          if (packed_block != ib) {
            pack_a(a, m, i0, mc, pc, kc, a_pack);
            packed_block = ib;
          }
          int64_t s_end = std::min(slivers, (js + 1) * slivers_per_task);
          for (int64_t s = js * slivers_per_task; s < s_end; s++) {
            int64_t j = jc + s * NR;
            int nr = int(std::min<int64_t>(NR, n - j));
            for (int64_t ir = 0; ir < mc; ir += MR) {
              int mr = int(std::min<int64_t>(MR, mc - ir));
              float* tile = c + (i0 + ir) * n + j;
              kernel(kc, a_pack + ir * kc, b_pack + s * NR * kc, tile, n, beta_here, mr, nr);
              if (tile_epilogue) tile_epilogue->fn(tile_epilogue->ctx, tile, n, i0 + ir, j, mr, nr);
            }
          }
        }
      });
    }
  }
}

template <typename T>
void matmul_typed(const T* a, const T* b, DType c_dtype, void* c, int64_t batch, int64_t m, int64_t n, int64_t k,
                  bool trans_a, bool trans_b, int64_t stride_a, int64_t stride_b, int64_t stride_c, float beta) {
  int64_t lda = trans_a ? m : k, ldb = trans_b ? k : n;
  auto one = [&](int64_t i) {
    View<T> av{a + i * stride_a, lda, trans_a}, bv{b + i * stride_b, ldb, trans_b};
    if (c_dtype == DType::F32) {
      gemm(av, bv, static_cast<float*>(c) + i * stride_c, m, n, k, beta);
      return;
    }
    // bfloat16 output: accumulate in a float32 scratch tile, round once at the end.
    uint16_t* ci = static_cast<uint16_t*>(c) + i * stride_c;
    std::vector<float> scratch(size_t(m * n));
    if (beta != 0.f) {
      for (int64_t e = 0; e < m * n; e++) scratch[e] = bf16_to_f32(ci[e]);
    }
    gemm(av, bv, scratch.data(), m, n, k, beta);
    for (int64_t e = 0; e < m * n; e++) ci[e] = f32_to_bf16(scratch[e]);
  };
  // Many small GEMMs (attention heads): one per thread. Otherwise each GEMM uses every thread.
  double flops = 2.0 * double(m) * double(n) * double(k);
  if (batch > 1 && (batch >= 2 * num_threads() || flops < 4e6)) {
    parallel_for(0, batch, 1, [&](size_t lo, size_t hi) {
      for (size_t i = lo; i < hi; i++) one(int64_t(i));
    });
  } else {
    for (int64_t i = 0; i < batch; i++) one(i);
  }
}

}  // namespace

// One GEMM into float32 C = op(A) op(B) (A, B float32 or bfloat16), with `epilogue` applied to every
// finished tile of C. Not in kernels.inc: a CPU-internal hook, declared where it is used (linear.cpp).
void matmul_f32_epilogue(DType ab_dtype, const void* a, const void* b, float* c, int64_t m, int64_t n, int64_t k,
                         bool trans_a, bool trans_b, TileEpilogue epilogue, void* ctx) {
  Epilogue e{epilogue, ctx};
  dispatch_float(ab_dtype, "matmul", [&](auto tag) {
    using T = decltype(tag);
    View<T> av{static_cast<const T*>(a), trans_a ? m : k, trans_a}, bv{static_cast<const T*>(b), trans_b ? k : n, trans_b};
    gemm(av, bv, c, m, n, k, 0.f, epilogue ? &e : nullptr);
  });
}

void matmul(DType ab_dtype, const void* a, const void* b, DType c_dtype, void* c, int64_t batch, int64_t m, int64_t n,
            int64_t k, bool trans_a, bool trans_b, int64_t stride_a, int64_t stride_b, int64_t stride_c, float beta) {
  MG_CHECK(c_dtype == DType::F32 || c_dtype == DType::BF16, "matmul: output dtype %s is not supported",
           dtype_name(c_dtype));
  dispatch_float(ab_dtype, "matmul", [&](auto tag) {
    using T = decltype(tag);
    matmul_typed(static_cast<const T*>(a), static_cast<const T*>(b), c_dtype, c, batch, m, n, k, trans_a, trans_b,
                 stride_a, stride_b, stride_c, beta);
  });
}

}  // namespace mg::cpu
