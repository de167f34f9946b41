// Elementwise CUDA kernels: fill, cast, affine, broadcasting binary ops and
// strided copies, as grid-stride loops. Same results as native/cpu/elementwise.cpp:
// bfloat16 is computed in float32 and rounded on store, and nothing is fused that
// the CPU computes in two roundings.
#include "elem.cuh"
#include "kernels.h"

namespace mg::cuda {
namespace {

// ---- fill, cast, affine ----

// Writes a bit pattern: float32 and int32 share the 4-byte kernel.
template <typename Bits>
__global__ void fill_kernel(Bits* out, int64_t n, Bits bits) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) out[i] = bits;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(uint16_t v) { return bf16_bits_to_f32(v); }
__device__ __forceinline__ float to_float(int32_t v) { return float(v); }  // round to nearest, as on the CPU

__device__ __forceinline__ void store_cast(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_cast(uint16_t* p, float v) { *p = f32_to_bf16_bits(v); }
__device__ __forceinline__ void store_cast(int32_t* p, float v) { *p = isfinite(v) ? int32_t(v) : 0; }  // toward zero

template <typename From, typename To>
__global__ void cast_kernel(const From* x, To* y, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) store_cast(y + i, to_float(x[i]));
}

// Calls fn(T{}) with the storage type of any dtype.
template <typename Fn>
void dispatch_any(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::F32: return fn(float{});
    case DType::BF16: return fn(uint16_t{});
    case DType::I32: return fn(int32_t{});
  }
  fail("cast: unknown dtype %d", int(dt));
}

template <typename T>
__global__ void affine_kernel(const T* x, T* y, int64_t n, float alpha, float beta) {
  // Two roundings, not one fma: the CPU reference computes alpha * x + beta that way.
  for (int64_t i = global_thread(); i < n; i += grid_threads())
    store(y + i, __fadd_rn(__fmul_rn(alpha, load(x + i)), beta));
}

// ---- strided views: binary and strided_copy ----

// A contiguous output of `rank` dims read from up to two strided inputs, after
// collapse(): size-1 dims dropped and neighbours that every input walks
// contiguously merged, so that the common cases (same shapes, a broadcast bias
// row) cost one or two divisions per element instead of one per original dim.
struct StridedShape {
  int rank;
  int64_t dims[kMaxRank];
  int64_t strides[2][kMaxRank];
};

StridedShape collapse(const int64_t* dims, int rank, const int64_t* s0, const int64_t* s1) {
  StridedShape out{};
  const int64_t* in[2] = {s0, s1 ? s1 : s0};
  int r = 0;
  for (int d = 0; d < rank; d++) {
    if (dims[d] == 1) continue;
    bool merge = r > 0;
    for (int t = 0; t < 2 && merge; t++) merge = out.strides[t][r - 1] == in[t][d] * dims[d];
    if (merge) {
      out.dims[r - 1] *= dims[d];
      for (int t = 0; t < 2; t++) out.strides[t][r - 1] = in[t][d];
    } else {
      out.dims[r] = dims[d];
      for (int t = 0; t < 2; t++) out.strides[t][r] = in[t][d];
      r++;
    }
  }
  if (r == 0) {  // a single element
    out.dims[0] = 1;
    out.strides[0][0] = out.strides[1][0] = 0;
    r = 1;
  }
  out.rank = r;
  return out;
}

// Whether 32-bit index arithmetic is exact: every element index and every
// input offset below 2^31 (offsets are non-negative: the binding takes strides >= 0).
bool fits_32bit(const StridedShape& s, int64_t n) {
  const int64_t limit = int64_t(1) << 31;
  if (n >= limit) return false;
  for (int t = 0; t < 2; t++) {
    int64_t last = 0;
    for (int d = 0; d < s.rank; d++) last += (s.dims[d] - 1) * s.strides[t][d];
    if (last >= limit) return false;
  }
  return true;
}

// Offsets of output element i into the inputs (I: uint32_t when fits_32bit, else int64_t).
template <typename I>
__device__ __forceinline__ void offsets(const StridedShape& s, I i, I& off0, I& off1) {
  if (s.rank == 1) {
    off0 = i * I(s.strides[0][0]);
    off1 = i * I(s.strides[1][0]);
    return;
  }
  off0 = 0;
  off1 = 0;
  for (int d = s.rank - 1; d >= 0; d--) {
    I dim = I(s.dims[d]);
    I q = i / dim, c = i - q * dim;
    off0 += c * I(s.strides[0][d]);
    off1 += c * I(s.strides[1][d]);
    i = q;
  }
}

__device__ __forceinline__ float apply(BinaryOp op, float a, float b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;  // IEEE division (no fast math), as on the CPU
  }
  return 0.f;
}

// out[i] = a op b. In place (out == a or b) is safe for contiguous inputs: each
// element is read and written by the same thread.
template <typename T, typename I>
__global__ void binary_kernel(BinaryOp op, const T* a, const T* b, T* out, StridedShape s, I n) {
  for (I i = I(global_thread()); i < n; i += I(grid_threads())) {
    I oa, ob;
    offsets(s, i, oa, ob);
    store(out + i, apply(op, load(a + oa), load(b + ob)));
  }
}

// out[i] = x[offset of i]: moves bits, so each dtype is copied by its storage width.
template <typename T, typename I>
__global__ void strided_copy_kernel(const T* x, T* out, StridedShape s, I n) {
  for (I i = I(global_thread()); i < n; i += I(grid_threads())) {
    I ox, unused;
    offsets(s, i, ox, unused);
    out[i] = x[ox];
  }
}

int64_t element_count(const int64_t* dims, int rank) {
  int64_t n = 1;
  for (int d = 0; d < rank; d++) n *= dims[d];  // the binding has checked it does not overflow
  return n;
}

}  // namespace

void fill(DType dt, void* out, int64_t n, double value) {
  if (n <= 0) return;
  cudaStream_t s = stream();
  uint32_t bits32 = 0;
  if (dt == DType::I32) {
    int32_t v = int32_t(value);
    std::memcpy(&bits32, &v, 4);
  } else if (dt == DType::F32) {
    float v = float(value);
    std::memcpy(&bits32, &v, 4);
  } else if (dt == DType::BF16) {
    uint16_t bits16 = f32_to_bf16(float(value));
    if (bits16 == 0) {
      check(cudaMemsetAsync(out, 0, size_t(n) * 2, s), "fill");
      return;
    }
    fill_kernel<<<blocks_for(n), kThreads, 0, s>>>(static_cast<uint16_t*>(out), n, bits16);
    check_launch("fill");
    return;
  } else {
    fail("fill: unknown dtype %d", int(dt));
  }
  if (bits32 == 0) {  // +0.0 or 0: a memset (-0.0 is not all zero bits)
    check(cudaMemsetAsync(out, 0, size_t(n) * 4, s), "fill");
    return;
  }
  fill_kernel<<<blocks_for(n), kThreads, 0, s>>>(static_cast<uint32_t*>(out), n, bits32);
  check_launch("fill");
}

void cast(DType from, const void* x, DType to, void* y, int64_t n) {
  if (n <= 0) return;
  cudaStream_t s = stream();
  if (from == DType::I32 && to == DType::I32) {  // not through float, which would lose bits above 2^24
    if (x != y) check(cudaMemcpyAsync(y, x, size_t(n) * 4, cudaMemcpyDeviceToDevice, s), "cast");
    return;
  }
  dispatch_any(from, [&](auto from_tag) {
    dispatch_any(to, [&](auto to_tag) {
      using From = decltype(from_tag);
      using To = decltype(to_tag);
      cast_kernel<<<blocks_for(n), kThreads, 0, s>>>(static_cast<const From*>(x), static_cast<To*>(y), n);
    });
  });
  check_launch("cast");
}

void affine(DType dt, const void* x, void* y, int64_t n, float alpha, float beta) {
  if (n <= 0) return;
  cudaStream_t s = stream();
  dispatch_float(dt, "affine", [&](auto tag) {
    using T = decltype(tag);
    affine_kernel<<<blocks_for(n), kThreads, 0, s>>>(static_cast<const T*>(x), static_cast<T*>(y), n, alpha, beta);
  });
  check_launch("affine");
}

void binary(BinaryOp op, DType dt, const void* a, const int64_t* sa, const void* b, const int64_t* sb, void* out,
            const int64_t* dims, int rank) {
  MG_CHECK(rank >= 1 && rank <= kMaxRank, "binary: rank %d out of range", rank);
  int64_t n = element_count(dims, rank);
  if (n == 0) return;
  StridedShape shape = collapse(dims, rank, sa, sb);
  cudaStream_t s = stream();
  dispatch_float(dt, "binary", [&](auto tag) {
    using T = decltype(tag);
    const T* ap = static_cast<const T*>(a);
    const T* bp = static_cast<const T*>(b);
    T* op_ = static_cast<T*>(out);
    if (fits_32bit(shape, n))
      binary_kernel<<<blocks_for(n), kThreads, 0, s>>>(op, ap, bp, op_, shape, uint32_t(n));
    else
      binary_kernel<<<blocks_for(n), kThreads, 0, s>>>(op, ap, bp, op_, shape, n);
  });
  check_launch("binary");
}

void strided_copy(DType dt, const void* x, const int64_t* sx, void* out, const int64_t* dims, int rank) {
  MG_CHECK(rank >= 1 && rank <= kMaxRank, "stridedCopy: rank %d out of range", rank);
  int64_t n = element_count(dims, rank);
  if (n == 0) return;
  StridedShape shape = collapse(dims, rank, sx, nullptr);
  size_t width = dtype_size(dt);
  cudaStream_t s = stream();
  if (shape.rank == 1 && shape.strides[0][0] == 1) {  // a contiguous run (x and out do not overlap)
    if (out != x) check(cudaMemcpyAsync(out, x, size_t(n) * width, cudaMemcpyDeviceToDevice, s), "stridedCopy");
    return;
  }
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x);
    T* yp = static_cast<T*>(out);
    if (fits_32bit(shape, n))
      strided_copy_kernel<<<blocks_for(n), kThreads, 0, s>>>(xp, yp, shape, uint32_t(n));
    else
      strided_copy_kernel<<<blocks_for(n), kThreads, 0, s>>>(xp, yp, shape, n);
  };
  if (width == 2) run(uint16_t{});
  else run(uint32_t{});
  check_launch("stridedCopy");
}

// scatter_rows: one block row per (sequence, chunk of columns); a sequence whose position is out of range writes
// nothing. The row moves as bits, by its storage width.
template <typename T>
__global__ void scatter_rows_kernel(const T* src, const int32_t* positions, T* dst, int64_t B, int64_t T_len, int64_t n) {
  for (int64_t idx = global_thread(); idx < B * n; idx += grid_threads()) {
    const int64_t b = idx / n, i = idx % n;
    const int64_t p = positions[b];
    if (p >= 0 && p < T_len) dst[(b * T_len + p) * n + i] = src[idx];
  }
}

void scatter_rows(DType dt, const void* src, const int32_t* positions, void* dst, int64_t B, int64_t T, int64_t n) {
  auto run = [&](auto tag) {
    using E = decltype(tag);
    scatter_rows_kernel<<<blocks_for(B * n), kThreads, 0, stream()>>>(static_cast<const E*>(src), positions,
                                                                       static_cast<E*>(dst), B, T, n);
  };
  if (dtype_size(dt) == 2) run(uint16_t{});
  else run(uint32_t{});
  check_launch("scatterRows");
}

}  // namespace mg::cuda
