// CUDA kernels of the op family "linear" (native/common/linear.inc): y = act(x·wᵀ + bias) with the bias,
// the saved pre-activation z and GELU applied to each C tile in registers as the GEMM finishes it, and the
// backward dz = dy·gelu'(z), db = column sums of dz (two-pass, fixed order), dx = dz·w, dw = dzᵀ·x.
//
// Two GEMMs, both templated on the operand layouts so that no transpose is ever materialized:
//  * bfloat16: tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate), ldmatrix fragments, a 4-stage
//    cp.async pipeline into padded shared memory. A shape or pointer that cp.async cannot copy in 16-byte
//    chunks (a leading dimension not a multiple of 8 elements, a base not 16-byte aligned) takes the same
//    kernel with element-wise predicated loads instead (kAsync = false): slower, same results.
//  * float32: a register-blocked SIMT GEMM (8x8 outputs per thread, fp32 FMA): parity with the CPU first.
// When a GEMM has too few C tiles to fill the GPU (the weight gradient of a small layer), K is split across
// blocks that write fp32 partial tiles; a second kernel adds them in split order and runs the epilogue.
// Nothing uses atomics: every result is the same bits run to run.
#include <cmath>
#include <cstdint>

#include "elem.cuh"
#include "kernels.h"

namespace mg::cuda {
namespace {

constexpr int kGelu = 1;
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

// ---- GELU, the tanh form, written exactly as native/cpu/linear.cpp evaluates it ----

// 0.5·(1 + tanh(u)) = σ(2u) = 1 / (1 + e^(−2u)): one exp, and no cancellation for large negative z.
__device__ __forceinline__ float gelu_u(float z) { return kSqrt2OverPi * z * (1.f + kGeluCubic * z * z); }
__device__ __forceinline__ float gelu(float z) { return z / (1.f + expf(-2.f * gelu_u(z))); }

// d gelu / dz = s + 2 z s (1 − s) √(2/π)(1 + 3·0.044715 z²), s = σ(2u); 1 − s = e·s while e < 1 (keeps its
// precision as s → 1), else 1 − s directly (e may be inf).
__device__ __forceinline__ float gelu_grad(float z) {
  float e = expf(-2.f * gelu_u(z));
  float s = 1.f / (1.f + e);
  float one_minus_s = e < 1.f ? e * s : 1.f - s;
  return s + 2.f * z * s * one_minus_s * kSqrt2OverPi * (1.f + 3.f * kGeluCubic * z * z);
}

// ---- the epilogue shared by both GEMMs and the split-K finish ----

// What a finished C element turns into. C is [rows, cols] row-major (y, z: the same layout).
// partial set: split-K, the raw fp32 sum goes to partial[split][row][col] and nothing else is written.
template <typename T>
struct Epilogue {
  const T* bias;   // [cols] or null
  T* z;            // pre-activation out, or null
  T* y;            // the output
  float* partial;  // split-K workspace, or null
  int64_t rows, cols;
  bool gelu;
};

// Two neighbouring elements p[0], p[1] (p[1] only when `two`), one 8-byte / 4-byte store when aligned.
__device__ __forceinline__ void store_pair(float* p, float v0, float v1, bool two) {
  if (two && (reinterpret_cast<uintptr_t>(p) & 7) == 0) {
    *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
  } else {
    p[0] = v0;
    if (two) p[1] = v1;
  }
}

__device__ __forceinline__ void store_pair(uint16_t* p, float v0, float v1, bool two) {
  uint16_t b0 = f32_to_bf16_bits(v0), b1 = f32_to_bf16_bits(v1);
  if (two && (reinterpret_cast<uintptr_t>(p) & 3) == 0) {
    *reinterpret_cast<uint32_t*>(p) = uint32_t(b0) | (uint32_t(b1) << 16);
  } else {
    p[0] = b0;
    if (two) p[1] = b1;
  }
}

// Finishes C[i][j], C[i][j+1] (the second only if j + 1 < cols) from their fp32 sums: bias, z, GELU, y,
// each rounded once to T. Out-of-range rows/columns (the tile's edge) write nothing.
template <typename T>
__device__ __forceinline__ void emit_pair(const Epilogue<T>& ep, int64_t split, int64_t i, int64_t j, float v0,
                                          float v1) {
  if (i >= ep.rows || j >= ep.cols) return;
  const bool two = j + 1 < ep.cols;
  const int64_t e = i * ep.cols + j;
  if (ep.partial) {
    store_pair(ep.partial + split * ep.rows * ep.cols + e, v0, v1, two);
    return;
  }
  if (ep.bias) {
    v0 += load(ep.bias + j);
    if (two) v1 += load(ep.bias + j + 1);
  }
  if (ep.z) store_pair(ep.z + e, v0, v1, two);
  if (ep.gelu) {
    v0 = gelu(v0);
    v1 = gelu(v1);
  }
  store_pair(ep.y + e, v0, v1, two);
}

// Split-K finish, one thread per column pair (j even) of a row: each element's partial sums added in split
// order 0, 1, …, then the epilogue.
template <typename T>
__global__ void splitk_finish_kernel(Epilogue<T> ep, int splits) {
  const int64_t total = ep.rows * ep.cols, pairs_per_row = (ep.cols + 1) / 2, pairs = ep.rows * pairs_per_row;
  Epilogue<T> out = ep;
  out.partial = nullptr;
  for (int64_t p = global_thread(); p < pairs; p += grid_threads()) {
    const int64_t i = p / pairs_per_row, j = (p - i * pairs_per_row) * 2;
    const bool two = j + 1 < ep.cols;
    const float* src = ep.partial + i * ep.cols + j;
    float s0 = 0.f, s1 = 0.f;
    for (int sp = 0; sp < splits; sp++, src += total) {
      s0 += src[0];
      if (two) s1 += src[1];
    }
    emit_pair(out, 0, i, j, s0, s1);
  }
}

// ---- bfloat16: tensor-core GEMM ----
//
// C [M, N] = A [M, K] · B [K, N]. Each operand is stored either K-major (A as [M, K], B as [N, K]: K
// contiguous) or MN-major (A as [K, M], B as [K, N]). The three linear GEMMs:
//   forward  y  = x·wᵀ : A = x  K-major,  B = w [n, k] K-major
//   backward dx = dz·w : A = dz K-major,  B = w [n, k] = [K, N] N-major
//   backward dw = dzᵀ·x: A = dz [m, n] = [K, M] M-major, B = x [m, k] = [K, N] N-major
// ldmatrix (K-major) or ldmatrix.trans (MN-major) turns either storage into the mma fragments.
//
// Block tile 128 x 128 x 32, 4 warps in 2 x 2, each warp 64 x 64 of C (4 m16 x 8 n8 mma tiles: 128 fp32
// accumulators a thread). A 64 x 64 warp tile needs 8 ldmatrix.x4 per 32 mma, the ratio that keeps shared
// memory bandwidth below the tensor-core rate. 4 stages of 20 KiB = 80 KiB shared memory, 2 blocks an SM
// (160 KiB: fits A100's 164 KiB and H100's 228 KiB), 8 warps an SM to hide latency.
// Expected efficiency: on A100 this is the CUTLASS sm80 128x128x32 configuration, typically 80-90% of cuBLAS.
// On H100 mma.sync issues at roughly 2/3 of the wgmma rate that cuBLAS uses, so at the base preset's
// shapes (small enough that cuBLAS is itself well below peak) expect about 55-75% of cuBLAS; the 70% target
// may need the sm_90a wgmma + TMA path. Measured numbers: none yet (written without a GPU).
constexpr int kBM = 128, kBN = 128, kBK = 32;
constexpr int kStages = 4;
constexpr int kWarpsM = 2, kWarpsN = 2;
constexpr int kWM = kBM / kWarpsM, kWN = kBN / kWarpsN;  // 64 x 64 per warp
constexpr int kMI = kWM / 16, kNI = kWN / 8;              // 4 x 8 mma tiles per warp
constexpr int kTcThreads = 32 * kWarpsM * kWarpsN;       // 128
constexpr int kPad = 8;  // bf16 elements (16 bytes) of padding per stored row: see Tile

// One operand tile (MN rows of C by kBK of K) in shared memory. Rows are padded by 16 bytes, so the 8
// rows that one 8x8 ldmatrix matrix reads (same column, consecutive rows) fall in 8 different 16-byte
// bank groups: K-major rows are 80 bytes (offsets 0, 80, 160, … mod 128 = 0, 80, 32, 112, 64, 16, 96, 48),
// MN-major rows 272 bytes (16·r mod 128). Every row start and 8-element chunk stays 16-byte aligned,
// as cp.async and ldmatrix need.
template <bool KMajor, int MN>
struct Tile {
  static constexpr int kStride = KMajor ? kBK + kPad : MN + kPad;  // elements per stored row
  static constexpr int kElems = KMajor ? MN * kStride : kBK * kStride;
  static constexpr int kChunks = MN * kBK / 8;  // 16-byte chunks a stage copies
  __device__ static int offset(int mn, int k) { return KMajor ? mn * kStride + k : k * kStride + mn; }
};

template <bool AK, bool BK>
struct TcLayout {
  using A = Tile<AK, kBM>;
  using B = Tile<BK, kBN>;
  static constexpr int kStageElems = A::kElems + B::kElems;
  static constexpr int kSmemBytes = kStages * kStageElems * 2;
};
static_assert(TcLayout<true, true>::kSmemBytes == 81920, "4 stages of 20 KiB");
static_assert(Tile<true, kBM>::kChunks % kTcThreads == 0, "tile copies split evenly");

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

// 16 bytes global → shared, asynchronous; src_bytes 0 fills the 16 bytes with zeros and reads nothing.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(pred ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void st_shared16(uint32_t dst, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a·b for one m16n8k16 tile: a is 16x16 (4 regs of bf16 pairs), b 16x8 (2 regs), c 16x8 fp32.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Copies the operand tile rows [mn0, mn0 + MN) x K [k0, k0 + kBK) into shared memory at `dst` (a stage's
// tile), zeros outside [0, mn_total) x [k0, k_end). Each thread copies kChunks / kTcThreads 16-byte chunks
// (8 elements along the stored row); neighbouring threads take neighbouring chunks, so a warp reads whole
// runs of a stored row. kAsync: cp.async, which needs the chunk's 8 elements to be all in or all out and
// 16-byte aligned (the host checks: base 16-byte aligned, ld a multiple of 8 — ld is the stored row's full
// extent, K or M/N, in every call here, so k_end, mn_total and every chunk start are multiples of 8 too). Else element-wise loads, each predicated, then one 16-byte store.
template <bool KMajor, int MN, bool kAsync>
__device__ __forceinline__ void load_tile(uint16_t* dst, const uint16_t* src, int64_t ld, int64_t mn0,
                                          int64_t mn_total, int64_t k0, int64_t k_end) {
  using L = Tile<KMajor, MN>;
  constexpr int kRowChunks = KMajor ? kBK / 8 : MN / 8;  // chunks per stored row
#pragma unroll
  for (int p = 0; p < L::kChunks / kTcThreads; p++) {
    const int c = threadIdx.x + p * kTcThreads;
    const int row = c / kRowChunks, col = (c % kRowChunks) * 8;  // stored row (mn or k) and its first element
    const int mn = KMajor ? row : col, k = KMajor ? col : row;
    const int64_t gmn = mn0 + mn, gk = k0 + k;
    const uint32_t s = smem_u32(dst + L::offset(mn, k));
    if constexpr (kAsync) {
      const bool in = gmn < mn_total && gk < k_end;
      cp_async16(s, in ? src + (KMajor ? gmn * ld + gk : gk * ld + gmn) : src, in);
    } else {
      uint32_t w[4];
#pragma unroll
      for (int h = 0; h < 4; h++) {
        uint32_t pair = 0;
#pragma unroll
        for (int e = 0; e < 2; e++) {
          const int q = 2 * h + e;  // element q of the chunk runs along the stored row
          const int64_t em = KMajor ? gmn : gmn + q, ek = KMajor ? gk + q : gk;
          if (em < mn_total && ek < k_end) pair |= uint32_t(src[KMajor ? em * ld + ek : ek * ld + em]) << (16 * e);
        }
        w[h] = pair;
      }
      st_shared16(s, w[0], w[1], w[2], w[3]);
    }
  }
}

// One block computes one 128 x 128 C tile over K range [split·k_chunk, min(K, (split + 1)·k_chunk)).
// Tiles are numbered along N within groups of 8 M-tiles (blockIdx.x), so the blocks running together
// share A row panels and B column panels in L2. blockIdx.z: the K split.
template <bool AK, bool BK, bool kAsync>
__global__ void __launch_bounds__(kTcThreads, 2)
    gemm_bf16_kernel(const uint16_t* __restrict__ a, int64_t lda, const uint16_t* __restrict__ b, int64_t ldb,
                     int64_t M, int64_t N, int64_t K, int64_t k_chunk, int64_t tiles_m, int64_t tiles_n,
                     Epilogue<uint16_t> ep) {
  using Lay = TcLayout<AK, BK>;
  using TA = typename Lay::A;
  using TB = typename Lay::B;
  extern __shared__ __align__(16) uint16_t smem[];

  // Grouped tile order: groups of kGroup M-tiles, N-tiles walked within a group.
  constexpr int64_t kGroup = 8;
  const int64_t t = blockIdx.x;
  const int64_t group = t / (kGroup * tiles_n), first_m = group * kGroup;
  const int64_t group_m = min(kGroup, tiles_m - first_m);
  const int64_t within = t - group * kGroup * tiles_n;
  const int64_t m0 = (first_m + within % group_m) * kBM, n0 = (within / group_m) * kBN;

  const int64_t k_begin = int64_t(blockIdx.z) * k_chunk, k_end = min(K, k_begin + k_chunk);
  const int ktiles = k_end > k_begin ? int((k_end - k_begin + kBK - 1) / kBK) : 0;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp / kWarpsN, wn = warp % kWarpsN;  // this warp's 64 x 64 piece of the tile

  auto stage_a = [&](int s) { return smem + s * Lay::kStageElems; };
  auto stage_b = [&](int s) { return smem + s * Lay::kStageElems + TA::kElems; };
  auto load_stage = [&](int s, int kt) {
    const int64_t k0 = k_begin + int64_t(kt) * kBK;
    load_tile<AK, kBM, kAsync>(stage_a(s), a, lda, m0, M, k0, k_end);
    load_tile<BK, kBN, kAsync>(stage_b(s), b, ldb, n0, N, k0, k_end);
  };

  float acc[kMI][kNI][4];
#pragma unroll
  for (int i = 0; i < kMI; i++)
#pragma unroll
    for (int j = 0; j < kNI; j++)
#pragma unroll
      for (int r = 0; r < 4; r++) acc[i][j][r] = 0.f;

  // Prologue: stages 0 .. kStages-2 in flight, one commit group each (empty past the last k-tile, so the
  // group count, and with it the wait below, is the same on every path).
#pragma unroll
  for (int s = 0; s < kStages - 1; s++) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();
  }

  // Per-lane ldmatrix row offsets (see the fragment layouts of mma.m16n8k16): lane l addresses row l % 8 of
  // matrix l / 8. A matrices: (m +0, k +0), (m +8, k +0), (m +0, k +8), (m +8, k +8) → a0..a3.
  // B matrices, two n8 tiles: (n +0, k +0), (n +0, k +8), (n +8, k +0), (n +8, k +8) → b[2p][0..1], b[2p+1][0..1].
  const int a_mn = AK ? (lane & 15) : ((lane >> 3) & 1) * 8;
  const int a_k = AK ? (lane >> 4) * 8 : (lane >> 4) * 8 + (lane & 7);
  const int b_mn = BK ? (lane >> 4) * 8 + (lane & 7) : (lane >> 4) * 8;
  const int b_k = BK ? ((lane >> 3) & 1) * 8 : ((lane >> 3) & 1) * 8 + (lane & 7);

  for (int kt = 0; kt < ktiles; kt++) {
    // Stage kt has landed (this thread's copies: all but the newest kStages-2 groups are done); the barrier
    // makes every thread's copies visible, and tells that all warps finished k-tile kt-1, whose slot
    // (kt-1) % kStages = (kt + kStages-1) % kStages is refilled next.
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (kt + kStages - 1 < ktiles) load_stage((kt + kStages - 1) % kStages, kt + kStages - 1);
    cp_async_commit();

    const uint16_t* sa = stage_a(kt % kStages);
    const uint16_t* sb = stage_b(kt % kStages);
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t af[kMI][4], bfr[kNI][2];
#pragma unroll
      for (int i = 0; i < kMI; i++) {
        const uint32_t addr = smem_u32(sa + TA::offset(wm * kWM + i * 16 + a_mn, kk + a_k));
        if constexpr (AK) ldmatrix_x4(af[i], addr);
        else ldmatrix_x4_trans(af[i], addr);
      }
#pragma unroll
      for (int p = 0; p < kNI / 2; p++) {
        uint32_t r[4];
        const uint32_t addr = smem_u32(sb + TB::offset(wn * kWN + p * 16 + b_mn, kk + b_k));
        if constexpr (BK) ldmatrix_x4(r, addr);
        else ldmatrix_x4_trans(r, addr);
        bfr[2 * p][0] = r[0];
        bfr[2 * p][1] = r[1];
        bfr[2 * p + 1][0] = r[2];
        bfr[2 * p + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < kMI; i++)
#pragma unroll
        for (int j = 0; j < kNI; j++) mma_bf16(acc[i][j], af[i], bfr[j][0], bfr[j][1]);
    }
  }
  cp_async_wait<0>();  // only empty groups can remain; leave none behind

  // Epilogue in registers: accumulator r of mma tile (i, j) is C row g (+8 for r ≥ 2), column 2·(lane%4) + r%2
  // of that tile, g = lane / 4: each thread owns pairs of neighbouring columns.
  const int g = lane >> 2, c2 = (lane & 3) * 2;
#pragma unroll
  for (int i = 0; i < kMI; i++) {
#pragma unroll
    for (int j = 0; j < kNI; j++) {
      const int64_t row = m0 + wm * kWM + i * 16 + g, col = n0 + wn * kWN + j * 8 + c2;
      emit_pair(ep, blockIdx.z, row, col, acc[i][j][0], acc[i][j][1]);
      emit_pair(ep, blockIdx.z, row + 8, col, acc[i][j][2], acc[i][j][3]);
    }
  }
}

// ---- float32: SIMT GEMM ----
//
// Block tile 128 x 128, K in steps of 8, 256 threads in 16 x 16, each owning an 8 x 8 block of C: rows
// 4·ty + {0..3} and 64 + 4·ty + {0..3}, columns likewise with tx (so each k step is two float4 reads of A
// and two of B from shared memory: A broadcast within the warp, B 16 consecutive float4, no conflicts).
// Shared tiles are stored k-major ([k][m], [k][n], +4 padding); the next K step is fetched into registers
// while the current one is computed (double-buffered shared memory, one barrier per step).
constexpr int kFBM = 128, kFBN = 128, kFBK = 8;
constexpr int kFThreads = 256;
constexpr int kFPad = 4;

// This thread's 4 elements of the [mn0, +128) x [k0, +8) operand tile, zeros outside [0, mn_total) x [0, k_end).
// K-major storage: thread → mn = tid / 2, k = 4·(tid % 2) + e (a warp reads 16 rows x 32 bytes).
// MN-major storage: thread → k = tid / 32, mn = 4·(tid % 32) + e (a warp reads 512 contiguous bytes).
template <bool KMajor>
__device__ __forceinline__ void fetch_f32(const float* __restrict__ src, int64_t ld, int64_t mn0, int64_t mn_total,
                                          int64_t k0, int64_t k_end, float (&r)[4]) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int e = 0; e < 4; e++) {
    const int64_t gmn = mn0 + (KMajor ? tid >> 1 : (tid & 31) * 4 + e);
    const int64_t gk = k0 + (KMajor ? (tid & 1) * 4 + e : tid >> 5);
    r[e] = gmn < mn_total && gk < k_end ? src[KMajor ? gmn * ld + gk : gk * ld + gmn] : 0.f;
  }
}

// Stores the fetched elements into s[k][mn]. K-major: 4 scalar stores, conflict-free (bank (4k + mn) % 32 is
// distinct across the warp with the 132-float rows); MN-major: one float4.
template <bool KMajor>
__device__ __forceinline__ void stash_f32(float (*s)[kFBM + kFPad], const float (&r)[4]) {
  const int tid = threadIdx.x;
  if constexpr (KMajor) {
#pragma unroll
    for (int e = 0; e < 4; e++) s[(tid & 1) * 4 + e][tid >> 1] = r[e];
  } else {
    *reinterpret_cast<float4*>(&s[tid >> 5][(tid & 31) * 4]) = make_float4(r[0], r[1], r[2], r[3]);
  }
}

template <bool AK, bool BK>
__global__ void __launch_bounds__(kFThreads, 2)
    gemm_f32_kernel(const float* __restrict__ a, int64_t lda, const float* __restrict__ b, int64_t ldb, int64_t M,
                    int64_t N, int64_t K, int64_t k_chunk, int64_t tiles_m, int64_t tiles_n, Epilogue<float> ep) {
  __shared__ __align__(16) float As[2][kFBK][kFBM + kFPad];
  __shared__ __align__(16) float Bs[2][kFBK][kFBN + kFPad];

  constexpr int64_t kGroup = 8;  // grouped tile order, as in the bf16 kernel
  const int64_t t = blockIdx.x;
  const int64_t group = t / (kGroup * tiles_n), first_m = group * kGroup;
  const int64_t group_m = min(kGroup, tiles_m - first_m);
  const int64_t within = t - group * kGroup * tiles_n;
  const int64_t m0 = (first_m + within % group_m) * kFBM, n0 = (within / group_m) * kFBN;

  const int64_t k_begin = int64_t(blockIdx.z) * k_chunk, k_end = min(K, k_begin + k_chunk);
  const int64_t ksteps = k_end > k_begin ? (k_end - k_begin + kFBK - 1) / kFBK : 0;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; i++)
#pragma unroll
    for (int j = 0; j < 8; j++) acc[i][j] = 0.f;

  float ra[4], rb[4];
  if (ksteps > 0) {
    fetch_f32<AK>(a, lda, m0, M, k_begin, k_end, ra);
    fetch_f32<BK>(b, ldb, n0, N, k_begin, k_end, rb);
    stash_f32<AK>(As[0], ra);
    stash_f32<BK>(Bs[0], rb);
  }
  __syncthreads();

  for (int64_t s = 0; s < ksteps; s++) {
    const int buf = int(s & 1);
    const bool more = s + 1 < ksteps;
    if (more) {  // the next step's loads are in flight during this step's FMAs
      const int64_t k0 = k_begin + (s + 1) * kFBK;
      fetch_f32<AK>(a, lda, m0, M, k0, k_end, ra);
      fetch_f32<BK>(b, ldb, n0, N, k0, k_end, rb);
    }
#pragma unroll
    for (int kk = 0; kk < kFBK; kk++) {
      const float4 a0 = *reinterpret_cast<const float4*>(&As[buf][kk][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4*>(&As[buf][kk][64 + ty * 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&Bs[buf][kk][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&Bs[buf][kk][64 + tx * 4]);
      const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    // The other buffer was last read in step s-1, before the barrier that ended it.
    if (more) {
      stash_f32<AK>(As[buf ^ 1], ra);
      stash_f32<BK>(Bs[buf ^ 1], rb);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 8; i++) {
    const int64_t row = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
#pragma unroll
    for (int j = 0; j < 8; j += 2) {
      const int64_t col = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
      emit_pair(ep, blockIdx.z, row, col, acc[i][j], acc[i][j + 1]);
    }
  }
}

// ---- host side of the GEMMs ----

int sm_count() {
  static const int count = [] {
    int device = 0, n = 0;
    check(cudaGetDevice(&device), "linear");
    check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "linear");
    return n;
  }();
  return count;
}

constexpr int64_t kMaxSplits = 16;
constexpr int64_t kSplitWorkspaceBytes = int64_t(64) << 20;

// How many K splits: 1 unless the C tiles fill less than half of the GPU's block slots (2 blocks an SM);
// then enough to fill them, each split keeping at least min_steps K steps, the fp32 workspace at most 64 MiB.
// Returns the K range of one split (a whole number of K steps) in *k_chunk.
int64_t choose_splits(int64_t tiles, int64_t M, int64_t N, int64_t K, int64_t step, int64_t min_steps,
                      int64_t* k_chunk) {
  const int64_t steps = (K + step - 1) / step;
  const int64_t slots = 2 * int64_t(sm_count());
  int64_t splits = 1;
  if (tiles * 2 <= slots) {
    splits = std::min({slots / tiles, steps / min_steps, kMaxSplits,
                       kSplitWorkspaceBytes / std::max<int64_t>(1, M * N * int64_t(sizeof(float)))});
    splits = std::max<int64_t>(splits, 1);
  }
  const int64_t steps_per_split = std::max<int64_t>(1, (steps + splits - 1) / splits);
  *k_chunk = steps_per_split * step;
  return splits == 1 ? 1 : (steps + steps_per_split - 1) / steps_per_split;  // every split non-empty
}

template <typename Kernel>
void allow_big_smem(Kernel kernel, int bytes) {
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), "linear");
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared),
        "linear");
}

template <bool AK, bool BK, bool kAsync>
void launch_bf16(dim3 grid, cudaStream_t s, const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, int64_t M,
                 int64_t N, int64_t K, int64_t k_chunk, int64_t tiles_m, int64_t tiles_n, const Epilogue<uint16_t>& ep) {
  constexpr int bytes = TcLayout<AK, BK>::kSmemBytes;
  static const bool prepared = (allow_big_smem(gemm_bf16_kernel<AK, BK, kAsync>, bytes), true);  // once
  (void)prepared;
  gemm_bf16_kernel<AK, BK, kAsync><<<grid, kTcThreads, bytes, s>>>(a, lda, b, ldb, M, N, K, k_chunk, tiles_m,
                                                                   tiles_n, ep);
}

template <bool AK, bool BK>
void launch_f32(dim3 grid, cudaStream_t s, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t M,
                int64_t N, int64_t K, int64_t k_chunk, int64_t tiles_m, int64_t tiles_n, const Epilogue<float>& ep) {
  gemm_f32_kernel<AK, BK><<<grid, kFThreads, 0, s>>>(a, lda, b, ldb, M, N, K, k_chunk, tiles_m, tiles_n, ep);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// C [M, N] = A·B with the epilogue `ep` (ep.rows = M, ep.cols = N, ep.partial unset). AK / BK: operand
// storage, K-major or MN-major (see the bf16 kernel); lda / ldb: the stored row lengths.
template <bool AK, bool BK, typename T>
void gemm(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t M, int64_t N, int64_t K, Epilogue<T> ep,
          const char* op) {
  constexpr bool bf16 = sizeof(T) == 2;
  const int64_t bm = bf16 ? kBM : kFBM, bn = bf16 ? kBN : kFBN, step = bf16 ? kBK : kFBK;
  const int64_t tiles_m = (M + bm - 1) / bm, tiles_n = (N + bn - 1) / bn, tiles = tiles_m * tiles_n;
  MG_CHECK(tiles <= INT32_MAX, "%s: the GEMM [%lld, %lld] has too many tiles", op, (long long)M, (long long)N);
  int64_t k_chunk = 0;
  const int64_t splits = choose_splits(tiles, M, N, K, step, bf16 ? 8 : 32, &k_chunk);  // ≥ 256 of K a split
  cudaStream_t s = stream();
  Epilogue<T> tile_ep = ep;
  if (splits > 1)
    tile_ep.partial = static_cast<float*>(reduction_scratch(size_t(splits * M * N) * sizeof(float)));
  dim3 grid{unsigned(tiles), 1, unsigned(splits)};
  if constexpr (bf16) {
    // cp.async copies 16-byte chunks along each stored row: the rows (length lda / ldb) and bases must be aligned.
    if (aligned16(a) && aligned16(b) && lda % 8 == 0 && ldb % 8 == 0)
      launch_bf16<AK, BK, true>(grid, s, a, lda, b, ldb, M, N, K, k_chunk, tiles_m, tiles_n, tile_ep);
    else
      launch_bf16<AK, BK, false>(grid, s, a, lda, b, ldb, M, N, K, k_chunk, tiles_m, tiles_n, tile_ep);
  } else {
    launch_f32<AK, BK>(grid, s, a, lda, b, ldb, M, N, K, k_chunk, tiles_m, tiles_n, tile_ep);
  }
  check_launch(op);
  if (splits > 1) {
    splitk_finish_kernel<T><<<blocks_for(M * ((N + 1) / 2)), kThreads, 0, s>>>(tile_ep, int(splits));
    check_launch(op);
  }
}

// ---- backward: dz = dy·gelu'(z) and the bias gradient ----

constexpr int64_t kColThreads = 256;  // columns per block of the column pass
constexpr int64_t kRowsPerBlock = 32;

// Pass 1. Block (cx, ry) owns columns [256·cx, +256) and rows [R·ry, +R): thread j walks its column down
// the rows (neighbouring threads read neighbouring elements), writes dz when GELU is on, and sums the
// values db is made of — the stored (rounded) dz, or dy — in double, in row order, into partial[ry][j].
template <typename T>
__global__ void activation_backward_kernel(const T* __restrict__ z, const T* __restrict__ dy, T* __restrict__ dz,
                                           double* __restrict__ partial, int64_t m, int64_t n, int64_t rows_per_block,
                                           bool gelu_on) {
  const int64_t j = int64_t(blockIdx.x) * kColThreads + threadIdx.x;
  if (j >= n) return;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_block, r1 = min(m, r0 + rows_per_block);
  double sum = 0;
  for (int64_t r = r0; r < r1; r++) {
    const int64_t e = r * n + j;
    float g = load(dy + e);
    if (gelu_on) {
      T rounded;
      store(&rounded, g * gelu_grad(load(z + e)));
      dz[e] = rounded;
      g = load(&rounded);  // db is exactly Σ dz as stored
    }
    sum += double(g);
  }
  if (partial) partial[int64_t(blockIdx.y) * n + j] = sum;
}

// Pass 2: db[j] = the row blocks' partial sums added in block order (0 blocks: 0).
template <typename T>
__global__ void bias_grad_kernel(const double* __restrict__ partial, T* __restrict__ db, int64_t n, int64_t blocks) {
  for (int64_t j = global_thread(); j < n; j += grid_threads()) {
    double s = 0;
    for (int64_t b = 0; b < blocks; b++) s += partial[b * n + j];
    store(db + j, float(s));
  }
}

template <typename T>
void activation_backward(const T* z, const T* dy, T* dz, T* db, int64_t m, int64_t n, bool gelu_on) {
  if (n == 0) return;
  cudaStream_t s = stream();
  // The row block length depends on m only (so the sums' order is fixed for a shape); grown past 32 only
  // when m needs more than 65535 blocks (gridDim.y's limit).
  const int64_t rows_per_block = std::max<int64_t>(kRowsPerBlock, (m + 65534) / 65535);
  const int64_t blocks = (m + rows_per_block - 1) / rows_per_block;
  const int64_t col_blocks = (n + kColThreads - 1) / kColThreads;
  MG_CHECK(col_blocks <= INT32_MAX, "linear backward: n = %lld is too large", (long long)n);
  double* partial = db && blocks > 0 ? static_cast<double*>(reduction_scratch(size_t(blocks * n) * sizeof(double)))
                                     : nullptr;
  if (blocks > 0) {
    dim3 grid{unsigned(col_blocks), unsigned(blocks)};
    activation_backward_kernel<T><<<grid, unsigned(kColThreads), 0, s>>>(z, dy, dz, partial, m, n, rows_per_block,
                                                                         gelu_on);
    check_launch("linear backward");
  }
  if (db) {
    bias_grad_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(partial, db, n, blocks);
    check_launch("linear backward");
  }
}

}  // namespace

void linear_forward(DType dt, const void* x, const void* w, const void* bias, void* z, void* y, int64_t m, int64_t n,
                    int64_t k, int activation) {
  MG_CHECK(activation == 0 || activation == kGelu, "linear: unknown activation code %d", activation);
  if (m == 0 || n == 0) return;
  dispatch_float(dt, "linear", [&](auto tag) {
    using T = decltype(tag);
    Epilogue<T> ep{static_cast<const T*>(bias), static_cast<T*>(z), static_cast<T*>(y), nullptr, m, n,
                   activation == kGelu};
    // y [m, n] = x [m, k] · w [n, k]ᵀ: both operands K-major. k = 0 gives act(bias) (or act(0)).
    gemm<true, true>(static_cast<const T*>(x), k, static_cast<const T*>(w), k, m, n, k, ep, "linear");
  });
}

void linear_backward(DType dt, const void* x, const void* w, const void* z, const void* dy, void* dz, void* dx,
                     void* dw, void* db, int64_t m, int64_t n, int64_t k, int activation) {
  MG_CHECK(activation == 0 || activation == kGelu, "linear backward: unknown activation code %d", activation);
  const bool gelu_on = activation == kGelu;
  MG_CHECK(!gelu_on || (z && dz), "linear backward: GELU needs z and a dz buffer");
  dispatch_float(dt, "linear backward", [&](auto tag) {
    using T = decltype(tag);
    if (gelu_on || db)
      activation_backward<T>(static_cast<const T*>(z), static_cast<const T*>(dy), static_cast<T*>(dz),
                             static_cast<T*>(db), m, n, gelu_on);
    const T* gz = static_cast<const T*>(gelu_on ? dz : dy);  // [m, n]
    // dx [m, k] = dz [m, n] · w [n, k]: A K-major (ld n), B = w stored [K, N]: N-major (ld k). n = 0: zeros.
    if (dx && m && k) {
      Epilogue<T> ep{nullptr, nullptr, static_cast<T*>(dx), nullptr, m, k, false};
      gemm<true, false>(gz, n, static_cast<const T*>(w), k, m, k, n, ep, "linear backward");
    }
    // dw [n, k] = dzᵀ · x: A = dz stored [K = m, M = n]: M-major (ld n), B = x stored [K = m, N = k]: N-major
    // (ld k). m = 0: zeros.
    if (dw && n && k) {
      Epilogue<T> ep{nullptr, nullptr, static_cast<T*>(dw), nullptr, n, k, false};
      gemm<false, false>(gz, n, static_cast<const T*>(x), k, n, k, m, ep, "linear backward");
    }
  });
}

}  // namespace mg::cuda
