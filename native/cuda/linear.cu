// CUDA kernels of the op family "linear" (native/common/linear.inc): y = act(x·wᵀ + bias) with the bias,
// the saved pre-activation z and GELU applied to each C tile in registers as the GEMM finishes it, and the
// backward dz = dy·gelu'(z), db = column sums of dz (two-pass, fixed order), dx = dz·w, dw = dzᵀ·x.
//
// Three GEMMs, all templated on the operand layouts so that no transpose is ever materialized:
//  * bfloat16 on Hopper (compute capability 9.0, sm_90a build): a warp-specialized persistent wgmma GEMM
//    fed by TMA through an mbarrier ring (gemm_bf16_wgmma_kernel), when TMA can address the operands
//    (16-byte aligned bases and row strides).
//  * bfloat16 elsewhere: tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate), ldmatrix fragments, a
//    4-stage cp.async pipeline into padded shared memory. A shape or pointer that cp.async cannot copy in
//    16-byte chunks (a leading dimension not a multiple of 8 elements, a base not 16-byte aligned) takes the
//    same kernel with element-wise predicated loads instead (kAsync = false): slower, same results.
//  * float32: a register-blocked SIMT GEMM (8x8 outputs per thread, fp32 FMA): parity with the CPU first.
// When a GEMM has too few C tiles to fill the GPU (the weight gradient of a small layer), K is split across
// blocks that write fp32 partial tiles; a second kernel adds them in split order and runs the epilogue.
// Nothing uses atomics: every result is the same bits run to run.
#include <cuda.h>  // CUtensorMap and its enums only: the driver's encoder is looked up at run time

#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "elem.cuh"
#include "kernels.h"
#include "ptx/hopper.cuh"
#include "ptx/sm80.cuh"

namespace mg::cuda {
namespace {

using namespace ptx;  // the PTX primitives (native/cuda/ptx)

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
// shapes (small enough that cuBLAS is itself well below peak) expect about 55-75% of cuBLAS, which is why
// Hopper takes the wgmma + TMA path below instead. Measured numbers: none yet (written without a GPU).
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

// ---- bfloat16 on Hopper (sm_90a): TMA + wgmma, warp-specialized, persistent ----
//
// The same C = A·B with the same three operand layouts and the same epilogue as gemm_bf16_kernel, for
// compute capability 9.0 when the sm_90a machine code is in the binary (the host checks; see
// wgmma_usable). mma.sync reaches only about two thirds of Hopper's tensor-core rate; wgmma reaches it.
//
// Block: 384 threads = 3 warpgroups. Warpgroup 0 is the producer: one thread issues the TMA (bulk tensor)
// copies of each K step's A and B tiles into a ring of kStages shared-memory stages. Warpgroups 1 and 2
// are the consumers: consumer c owns rows [64c, 64c + 64) of the 128 x BN C tile and, per K step of 64,
// issues 4 wgmma.mma_async m64nBNk16 (bf16 in, fp32 accumulate in registers: BN / 2 floats a thread),
// reading A and B straight from the swizzled stages. Each stage has two mbarriers: `full` (the producer
// arms it with the stage's byte count; the TMA completes it) and `empty` (one arrival per consumer warp
// once its wgmmas reading the stage are done; the producer waits on it before refilling the stage).
// setmaxnreg moves registers from the producer (40) to the consumers (232).
//
// Persistent: the grid is at most one block per SM; block b takes work units b, b + grid, … Each unit is
// one C tile and one K split (split-K, as in the mma.sync path, when the tiles alone cannot fill the
// GPU). Producer and consumers walk the same unit sequence, so the ring simply continues from unit to
// unit: while the consumers run the epilogue of one unit, the producer already fills the stages of the next.
//
// Tile 128 x BN x 64, BN in {128, 192, 256} (chosen per shape on the host to fill the SMs evenly): the
// K step of 64 bf16 is one 128-byte row of the 128-byte swizzle, the widest TMA box that swizzle allows.
// Stages: 4 (BN 256, 48 KiB each), 5 (192, 40 KiB), 6 (128, 32 KiB): 192-200 KiB of the 227 KiB.
//
// Edges: TMA fills out-of-range rows/columns of a box (M, N and K tails, whole boxes past the end) with
// zeros, and still counts them in the bytes it reports to the mbarrier, so the consumers need no special
// case; the epilogue (emit_pair) writes only in-range elements. Nothing is accumulated into outputs.
//
// Shared-memory layouts (all stage bases 1024-byte aligned: the 128-byte swizzle repeats every 8 rows of
// 128 bytes and both TMA and wgmma apply it to absolute shared addresses, XOR of address bits [4, 7) with
// bits [7, 10): the 16-byte chunk c of 128-byte row r is stored at chunk c ^ (r % 8)):
//   K-major operand (A = x or dz [M, K]; B = w [N, K]): one TMA box {64 of K, rows} per stage, stored as
//     rows of 128 bytes (64 K elements): row r at byte 128·r. A: 128 rows (16 KiB); B: BN rows.
//   MN-major operand (B = w as [K, N] for dx; A = dz as [K, M] and B = x as [K, N] for dw): boxes
//     {64 of M/N, 64 of K}: 64 rows (one per k) of 128 bytes (64 M/N elements), 8 KiB a box, box j
//     (M/N columns [64j, 64j + 64)) at byte 8192·j. A: 2 boxes; B: BN / 64 boxes.
//
// wgmma shared-memory matrix descriptor (64 bits; PTX ISA "Matrix Descriptor Format", CUTLASS
// GmmaDescriptor):
//   bits  0-13  start address >> 4           bits 16-29  leading-dimension byte offset (LBO) >> 4
//   bits 32-45  stride-dimension byte offset (SBO) >> 4
//   bits 49-51  base offset (0: every start below is 1024-aligned or a row-internal offset, see below)
//   bits 62-63  layout: 0 none, 1 = 128-byte swizzle, 2 = 64-byte, 3 = 32-byte
// In units of 16 bytes ("core matrix" rows of 8 bf16), the canonical 128-byte-swizzle layouts are
//   K-major:  ((8, m), 2) : ((8, SBO), 1)        8 rows 128 bytes apart, then groups of 8 rows SBO apart;
//             K (16 = 2 chunks) contiguous inside the row. LBO is unused with swizzling (set to 1 = 16 B).
//   MN-major: ((8, m), (8, 2)) : ((1, LBO), (8, SBO))   64 M/N elements (8 chunks) contiguous, then the
//             next 64 at LBO; 8 K rows 128 bytes apart, then the next 8 K rows at SBO.
// (PTX ISA, "Leading/Stride Dimension Byte Offset", swizzled layouts: K-major LBO unused (assumed 1), SBO
// = the offset between groups of 8 rows; MN-major LBO = the offset between groups of swizzle-bytes / 16
// 16-byte rows along M/N, SBO = the offset between groups of 8 along K. Base offset 0 holds when the
// swizzle pattern starts on a 1024-byte boundary, as every stage and box here does.)
// Hence for the layouts above:
//   K-major:  SBO = 8 rows · 128 B = 1024, LBO = 16 (ignored). The k-th k16 step starts 32·k bytes into
//             the row: start address + 32·k. That stays inside the first 128-byte row of the 1024-byte
//             swizzle block, so address bits [7, 10) of the start are still 0 and base offset stays 0:
//             the hardware forms the address of (row r, chunk c) as start + 128·r + 16·c and XORs its bits
//             [4, 7) with r, exactly where TMA put logical chunk 2k + c of row r.
//   MN-major: LBO = 8192 (the next box of 64 M/N columns; only B with BN > 64 crosses it), SBO = 8 k rows
//             · 128 B = 1024. The k-th k16 step starts 16 rows further: start address + 2048·k (still
//             1024-aligned). Consumer c's A (M-major) is box c: start + 8192·c.
//   Consumer c's A (K-major) starts at row 64c: + 8192·c (1024-aligned).
// The wgmma transpose bits: 0 = K-major, 1 = MN-major (bf16 allows both for A and B from shared memory).
//
// Accumulator layout of m64nNk16 (the mma.m16n8 layout, one m16 slab per warp): warp w of the warpgroup
// holds rows 16w + g and 16w + g + 8, g = lane / 4; float 4j + {0, 1} is row 16w + g, columns 8j + 2·(lane
// % 4) + {0, 1}; 4j + {2, 3} the same columns of row 16w + g + 8.
constexpr int kHBM = 128, kHBK = 64;
constexpr int kHThreads = 384;       // producer warpgroup + 2 consumer warpgroups

template <int BN>
struct HopperCfg {
  static constexpr int kStages = BN == 256 ? 4 : BN == 192 ? 5 : 6;
  static constexpr int kABytes = kHBM * kHBK * 2;  // 16 KiB
  static constexpr int kBBytes = BN * kHBK * 2;
  static constexpr int kStageBytes = kABytes + kBBytes;
  // 1024 of slack to align the ring by hand (the dynamic shared memory base is only 16-byte aligned by
  // contract), the ring, then the 2·kStages mbarriers.
  static constexpr int kSmemBytes = 1024 + kStages * kStageBytes + 2 * kStages * 8;
  static_assert(kStageBytes % 1024 == 0, "stages stay 1024-byte aligned");
  static_assert(kSmemBytes <= 227 * 1024, "fits the opt-in shared memory of one block on sm_90");
  static_assert(BN % 64 == 0 && BN <= 256, "B boxes: 64 columns (MN-major), at most 256 rows (K-major)");
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Only the sm_90a compilation sees these (wgmma and setmaxnreg exist nowhere else; TMA and mbarrier
// try_wait need sm_90): compute_90 PTX and sm_80 code get an empty kernel, which the host never launches.

constexpr int kHConsumerWarps = 8;    // arrivals that free a stage
constexpr int kHBoxBytes = 64 * 128;  // one MN-major box, and one consumer's 64 rows of a K-major A tile
constexpr int kHProducerRegs = 40, kHConsumerRegs = 232;  // 128·40 + 256·232 = 64512 ≤ 65536

// One work unit: a C tile (grouped order, as gemm_bf16_kernel) and a K range [k0, k0 + 64·ktiles) ∩ [0, K).
struct HopperUnit {
  int64_t m0, n0;
  int k0, ktiles, split;
};

__device__ __forceinline__ HopperUnit hopper_unit(int u, int tiles_m, int tiles_n, int bn, int K, int k_chunk) {
  HopperUnit r;
  const int tiles = tiles_m * tiles_n;
  r.split = u / tiles;
  const int t = u - r.split * tiles;
  constexpr int kGroup = 8;
  const int group = t / (kGroup * tiles_n), first_m = group * kGroup;
  const int group_m = min(kGroup, tiles_m - first_m);
  const int within = t - group * kGroup * tiles_n;
  r.m0 = int64_t(first_m + within % group_m) * kHBM;
  r.n0 = int64_t(within / group_m) * bn;
  r.k0 = r.split * k_chunk;
  const int k_end = min(K, r.k0 + k_chunk);
  r.ktiles = (k_end - r.k0 + kHBK - 1) / kHBK;  // ≥ 1: the host makes every split non-empty
  return r;
}

// The descriptor of a 128-byte-swizzled operand at shared address `addr` (see the derivation above).
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((lbo & 0x3FFFF) >> 4) << 16) |
         (uint64_t((sbo & 0x3FFFF) >> 4) << 32) | (uint64_t(1) << 62);
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// map_a / map_b: TMA maps of A and B (K-major: {K, rows}, box {64, 128 or BN}; MN-major: {M or N, K},
// box {64, 64}), 128-byte swizzle, zero fill. units = tiles_m · tiles_n · splits.
template <bool AK, bool BK, int BN>
__global__ void __launch_bounds__(kHThreads, 1)
    gemm_bf16_wgmma_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                           int K, int k_chunk, int tiles_m, int tiles_n, int units, Epilogue<uint16_t> ep) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = HopperCfg<BN>;
  constexpr int kStages = Cfg::kStages;
  extern __shared__ uint8_t hopper_smem[];
  const uint32_t ring = (smem_u32(hopper_smem) + 1023u) & ~1023u;
  const uint32_t bars = ring + kStages * Cfg::kStageBytes;
  auto stage_a = [&](int s) { return ring + uint32_t(s * Cfg::kStageBytes); };
  auto stage_b = [&](int s) { return ring + uint32_t(s * Cfg::kStageBytes + Cfg::kABytes); };
  auto full_bar = [&](int s) { return bars + uint32_t(8 * s); };
  auto empty_bar = [&](int s) { return bars + uint32_t(8 * (kStages + s)); };

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; s++) {
      mbar_init(full_bar(s), 1);                  // the producer's arrive.expect_tx (+ the TMA bytes)
      mbar_init(empty_bar(s), kHConsumerWarps);  // one arrival per consumer warp
    }
    // Make the initialized barriers visible to the other threads and to the TMA unit (async proxy).
    fence_mbarrier_init();
    fence_proxy_async_shared();
  }
  __syncthreads();  // the only block-wide barrier: from here the warpgroups synchronize through mbarriers

  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    // ---- producer ----
    setmaxnreg_dec<kHProducerRegs>();
    if (threadIdx.x == 0) {
      tma_prefetch_map(&map_a);
      tma_prefetch_map(&map_b);
      int stage = 0;
      uint32_t phase = 0;  // parity of the ring's current lap
      for (int u = blockIdx.x; u < units; u += gridDim.x) {
        const HopperUnit w = hopper_unit(u, tiles_m, tiles_n, BN, K, k_chunk);
        const int m0 = int(w.m0), n0 = int(w.n0);
        for (int kt = 0; kt < w.ktiles; kt++) {
          // Lap 0 waits on parity 1, which a fresh barrier reports complete; lap L > 0 waits until the
          // consumers freed the stage in lap L - 1 (that phase has parity (L - 1) & 1 = phase ^ 1).
          mbar_wait(empty_bar(stage), phase ^ 1);
          const uint32_t full = full_bar(stage);
          mbar_arrive_expect_tx(full, Cfg::kStageBytes);
          const int k0 = w.k0 + kt * kHBK;
          if constexpr (AK) {
            tma_load_2d(stage_a(stage), &map_a, full, k0, m0);
          } else {
#pragma unroll
            for (int j = 0; j < kHBM / 64; j++)
              tma_load_2d(stage_a(stage) + j * kHBoxBytes, &map_a, full, m0 + 64 * j, k0);
          }
          if constexpr (BK) {
            tma_load_2d(stage_b(stage), &map_b, full, k0, n0);
          } else {
#pragma unroll
            for (int j = 0; j < BN / 64; j++)
              tma_load_2d(stage_b(stage) + j * kHBoxBytes, &map_b, full, n0 + 64 * j, k0);
          }
          if (++stage == kStages) {
            stage = 0;
            phase ^= 1;
          }
        }
      }
    }
  } else {
    // ---- consumers ----
    setmaxnreg_inc<kHConsumerRegs>();
    const int consumer = warpgroup - 1;
    const int lane = threadIdx.x & 31, warp = (threadIdx.x & 127) >> 5;
    // Per-stage descriptor parts (see the derivation above): this consumer's A rows and all of B.
    constexpr uint32_t kALbo = AK ? 16 : kHBoxBytes, kBLbo = BK ? 16 : kHBoxBytes, kSbo = 1024;
    constexpr uint32_t kAStep = AK ? 32 : 2048, kBStep = BK ? 32 : 2048;  // bytes per k16 step
    const uint32_t a_off = uint32_t(consumer) * kHBoxBytes;

    float acc[BN / 2];
    int stage = 0;
    uint32_t phase = 0;
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
      const HopperUnit w = hopper_unit(u, tiles_m, tiles_n, BN, K, k_chunk);
#pragma unroll
      for (int i = 0; i < BN / 2; i++) acc[i] = 0.f;
      int prev = -1;  // the stage whose wgmmas may still be running
      for (int kt = 0; kt < w.ktiles; kt++) {
        mbar_wait(full_bar(stage), phase);
#pragma unroll
        for (int i = 0; i < BN / 2; i++) fence_operand(acc[i]);
        wgmma_fence();  // the accumulators were last written by ordinary instructions or earlier wgmmas
        const uint64_t da = smem_desc(stage_a(stage) + a_off, kALbo, kSbo);
        const uint64_t db = smem_desc(stage_b(stage), kBLbo, kSbo);
#pragma unroll
        for (int kk = 0; kk < kHBK / 16; kk++)  // the start address is bits 0-13: add (bytes >> 4) there
          wgmma_bf16<BN, !AK, !BK>(acc, da + (kk * kAStep >> 4), db + (kk * kBStep >> 4));
        wgmma_commit();
        // Keep this step's wgmmas in flight; the previous step's are done after this wait, so its stage
        // can go back to the producer (each warp signals for itself once its wait returned).
        wgmma_wait<1>();
#pragma unroll
        for (int i = 0; i < BN / 2; i++) fence_operand(acc[i]);
        if (prev >= 0 && lane == 0) mbar_arrive(empty_bar(prev));
        prev = stage;
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
      wgmma_wait<0>();
#pragma unroll
      for (int i = 0; i < BN / 2; i++) fence_operand(acc[i]);
      if (prev >= 0 && lane == 0) mbar_arrive(empty_bar(prev));

      // Epilogue straight from the registers (the producer is already loading the next unit).
      const int64_t row = w.m0 + consumer * 64 + warp * 16 + (lane >> 2);
      const int64_t col = w.n0 + 2 * (lane & 3);
#pragma unroll
      for (int j = 0; j < BN / 8; j++) {
        emit_pair(ep, w.split, row, col + 8 * j, acc[4 * j], acc[4 * j + 1]);
        emit_pair(ep, w.split, row + 8, col + 8 * j, acc[4 * j + 2], acc[4 * j + 3]);
      }
    }
  }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// 1 when this binary's code for the running device is the sm_90a build (the only one with the kernel
// above); 0 when it is sm_80 machine code or PTX compiled by the driver.
__global__ void wgmma_probe_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
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

// ---- host side of the Hopper path ----

// cuTensorMapEncodeTiled, from the driver through the runtime's entry-point lookup: nothing links libcuda
// (the addon must load on machines without a driver). Null when the driver lacks it or is absent.
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiledFn encode_tiled() {
  static const EncodeTiledFn fn = []() -> EncodeTiledFn {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess || !p) {
      cudaGetLastError();  // not an error of any op: leave nothing pending
      return nullptr;
    }
    return reinterpret_cast<EncodeTiledFn>(p);
  }();
  return fn;
}

// MEMGPT_LINEAR_WGMMA, for A/B timing and parity checks on a GPU: "0" turns the Hopper path off (the
// mma.sync path runs everywhere); "128", "192" or "256" fixes its tile width; "<width>x<splits>" (e.g.
// "192x4") also fixes the K splits (capped at kMaxSplits and at one K step each); unset or anything else:
// both chosen per shape.
struct WgmmaSetting {
  bool off = false;
  int bn = 0;          // 0: chosen per shape
  int64_t splits = 0;  // 0: chosen per shape
};

const WgmmaSetting& wgmma_setting() {
  static const WgmmaSetting setting = [] {
    WgmmaSetting r;
    const char* s = std::getenv("MEMGPT_LINEAR_WGMMA");
    if (!s) return r;
    if (s[0] == '0' && s[1] == 0) {
      r.off = true;
      return r;
    }
    char* end = nullptr;
    const long bn = std::strtol(s, &end, 10);
    if (bn != 128 && bn != 192 && bn != 256) return r;
    r.bn = int(bn);
    if (*end == 'x') {
      const long splits = std::strtol(end + 1, nullptr, 10);
      if (splits >= 1) r.splits = std::min<int64_t>(splits, kMaxSplits);
    }
    return r;
  }();
  return setting;
}

// Whether gemm_bf16_wgmma_kernel can run here: a compute capability 9.0 device with enough shared memory,
// the driver's tensor-map encoder, and the sm_90a build of this file being the code the device runs (a
// probe kernel says so once; the answer is cached for the process).
bool wgmma_usable() {
  static const bool usable = [] {
    if (wgmma_setting().off) return false;
    int device = 0, major = 0, minor = 0, smem = 0;
    check(cudaGetDevice(&device), "linear");
    check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "linear");
    check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "linear");
    check(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "linear");
    const int need = std::max({HopperCfg<128>::kSmemBytes, HopperCfg<192>::kSmemBytes, HopperCfg<256>::kSmemBytes});
    if (major != 9 || minor != 0 || smem < need || !encode_tiled()) return false;
    cudaStream_t s = stream();
    int* flag = static_cast<int*>(reduction_scratch(sizeof(int)));
    wgmma_probe_kernel<<<1, 1, 0, s>>>(flag);
    if (cudaGetLastError() != cudaSuccess) return false;  // no code for this device: the other path
    int host = 0;
    check(cudaMemcpyAsync(&host, flag, sizeof(int), cudaMemcpyDeviceToHost, s), "linear");
    synchronize_stream("linear");
    return host == 1;
  }();
  return usable;
}

// A TMA map of a row-major bf16 matrix [rows, inner] (row stride ld elements), boxes of box_inner x box_rows
// with the 128-byte swizzle; out-of-range elements read as zeros. False when the driver refuses it.
bool make_tensor_map(CUtensorMap* map, const uint16_t* base, int64_t inner, int64_t rows, int64_t ld,
                     uint32_t box_inner, uint32_t box_rows) {
  const cuuint64_t dims[2] = {cuuint64_t(inner), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(ld) * 2};  // bytes between rows (dimension 0 is contiguous)
  const cuuint32_t box[2] = {box_inner, box_rows};
  const cuuint32_t element_strides[2] = {1, 1};
  return encode_tiled()(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<uint16_t*>(base), dims, strides, box,
                        element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

struct HopperPlan {
  int bn;
  int64_t splits, k_chunk;
};

// Tile width and K splits by a small cost model, in units of one 128 x 128 x 64 step of one SM (about
// 0.4 µs): a work unit costs its K steps scaled by BN / 128 and by the tile's relative wgmma efficiency
// (wider B tiles read A from shared memory fewer times per flop), plus an epilogue/ramp overhead (doubled
// for fp32 partials); units run in rounds of one per SM; split-K adds the finish pass over the fp32
// partials (about 1 MB a step) and its launch. The point is wave quantization: at the preset shapes the
// tile counts 128 · {96, 128, 384, 512} of BN 192 fill the 132 SMs of an H100/H200 far better than 128
// or 256 alone would.
HopperPlan plan_wgmma(int64_t M, int64_t N, int64_t K) {
  const WgmmaSetting& forced = wgmma_setting();
  const int64_t sms = sm_count(), steps = (K + kHBK - 1) / kHBK, tiles_m = (M + kHBM - 1) / kHBM;
  if (forced.splits > 0) {
    const int64_t per = (steps + std::min(forced.splits, steps) - 1) / std::min(forced.splits, steps);
    return {forced.bn, (steps + per - 1) / per, per * kHBK};  // every split non-empty
  }
  HopperPlan best{0, 1, steps * kHBK};
  double best_cost = 0;
  for (int bn : {256, 192, 128}) {
    if (forced.bn > 0 && bn != forced.bn) continue;
    const double width = bn / 128.0, efficiency = bn == 256 ? 1.0 : bn == 192 ? 0.96 : 0.88;
    const int64_t tiles = tiles_m * ((N + bn - 1) / bn);
    for (int64_t s = 1; s <= kMaxSplits && s <= steps; s++) {
      const int64_t per = (steps + s - 1) / s;
      if ((steps + per - 1) / per != s) continue;  // some split would be empty: a smaller s does the same
      if (s > 1 && s * M * N * int64_t(sizeof(float)) > kSplitWorkspaceBytes) break;
      if (tiles * s > INT32_MAX) break;
      const int64_t rounds = (tiles * s + sms - 1) / sms;
      const double unit = per * width / efficiency + 1.5 * width * (s > 1 ? 2 : 1);
      const double finish = s > 1 ? double(s * M * N * 4 + M * N * 2) / 1.07e6 + 5 : 0;
      const double cost = double(rounds) * unit + finish;
      if (best.bn == 0 || cost < 0.98 * best_cost) {  // ties: the wider tile, the fewer splits
        best = {bn, s, per * kHBK};
        best_cost = cost;
      }
    }
  }
  return best;
}

template <bool AK, bool BK, int BN>
void launch_wgmma(int grid, cudaStream_t s, const CUtensorMap& map_a, const CUtensorMap& map_b, int64_t K,
                  int64_t k_chunk, int64_t tiles_m, int64_t tiles_n, int64_t units, const Epilogue<uint16_t>& ep) {
  constexpr int bytes = HopperCfg<BN>::kSmemBytes;
  static const bool prepared = (allow_big_smem(gemm_bf16_wgmma_kernel<AK, BK, BN>, bytes), true);  // once
  (void)prepared;
  gemm_bf16_wgmma_kernel<AK, BK, BN><<<grid, kHThreads, bytes, s>>>(map_a, map_b, int(K), int(k_chunk), int(tiles_m),
                                                                   int(tiles_n), int(units), ep);
}

// The Hopper path of gemm() (same arguments). False, having done nothing, when it does not apply: not an
// sm_90a-capable setup, or operands TMA cannot address (bases 16-byte aligned and row strides a multiple of
// 16 bytes, i.e. ld % 8 == 0; extents below 2^30 so coordinates fit TMA's int32).
template <bool AK, bool BK>
bool gemm_wgmma(const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, int64_t M, int64_t N, int64_t K,
                const Epilogue<uint16_t>& ep, const char* op) {
  constexpr int64_t kLimit = int64_t(1) << 30;
  if (M < 1 || N < 1 || K < 1 || M >= kLimit || N >= kLimit || K >= kLimit) return false;
  if (!aligned16(a) || !aligned16(b) || lda % 8 != 0 || ldb % 8 != 0) return false;
  if (!wgmma_usable()) return false;
  const HopperPlan plan = plan_wgmma(M, N, K);
  const int64_t tiles_m = (M + kHBM - 1) / kHBM, tiles_n = plan.bn ? (N + plan.bn - 1) / plan.bn : 0;
  const int64_t units = tiles_m * tiles_n * plan.splits;
  if (units < 1 || units > INT32_MAX) return false;  // no plan (too many tiles for int32 unit numbers)
  // A: K-major [M, K] → map {K, M}, box {64, 128}; M-major [K, M] → map {M, K}, box {64, 64}.
  // B: K-major [N, K] → map {K, N}, box {64, BN}; N-major [K, N] → map {N, K}, box {64, 64}.
  CUtensorMap map_a, map_b;
  const bool mapped =
      (AK ? make_tensor_map(&map_a, a, K, M, lda, kHBK, kHBM) : make_tensor_map(&map_a, a, M, K, lda, 64, kHBK)) &&
      (BK ? make_tensor_map(&map_b, b, K, N, ldb, kHBK, uint32_t(plan.bn))
          : make_tensor_map(&map_b, b, N, K, ldb, 64, kHBK));
  if (!mapped) return false;

  const int grid = int(std::min<int64_t>(units, sm_count()));
  cudaStream_t s = stream();
  Epilogue<uint16_t> tile_ep = ep;
  if (plan.splits > 1)
    tile_ep.partial = static_cast<float*>(reduction_scratch(size_t(plan.splits * M * N) * sizeof(float)));
  switch (plan.bn) {
    case 128:
      launch_wgmma<AK, BK, 128>(grid, s, map_a, map_b, K, plan.k_chunk, tiles_m, tiles_n, units, tile_ep);
      break;
    case 192:
      launch_wgmma<AK, BK, 192>(grid, s, map_a, map_b, K, plan.k_chunk, tiles_m, tiles_n, units, tile_ep);
      break;
    default:
      launch_wgmma<AK, BK, 256>(grid, s, map_a, map_b, K, plan.k_chunk, tiles_m, tiles_n, units, tile_ep);
      break;
  }
  check_launch(op);
  if (plan.splits > 1) {
    splitk_finish_kernel<uint16_t><<<blocks_for(M * ((N + 1) / 2)), kThreads, 0, s>>>(tile_ep, int(plan.splits));
    check_launch(op);
  }
  return true;
}

// C [M, N] = A·B with the epilogue `ep` (ep.rows = M, ep.cols = N, ep.partial unset). AK / BK: operand
// storage, K-major or MN-major (see the bf16 kernel); lda / ldb: the stored row lengths.
template <bool AK, bool BK, typename T>
void gemm(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t M, int64_t N, int64_t K, Epilogue<T> ep,
          const char* op) {
  constexpr bool bf16 = sizeof(T) == 2;
  if constexpr (bf16) {
    if (gemm_wgmma<AK, BK>(a, lda, b, ldb, M, N, K, ep, op)) return;  // Hopper: TMA + wgmma
  }
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
