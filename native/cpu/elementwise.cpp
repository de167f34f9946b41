// Elementwise CPU kernels: fill, cast, affine, broadcasting binary ops and
// strided copies. bfloat16 is computed in float32 and rounded on store.
#include <cmath>
#include <cstring>
#include <type_traits>

#include "../common/threadpool.h"
#include "elem.h"
#include "isa.h"
#include "kernels.h"

namespace mg::cpu {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per parallel chunk

inline float apply(BinaryOp op, float a, float b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
  }
  return 0.f;
}

// y[j] = a[j] op b[j] for j < n, the op's switch hoisted out of the loop so that each loop vectorises (the
// gradient accumulations of autograd are this with y = a; a switch per element made them ten times slower).
template <BinaryOp OP, typename T>
inline void contiguous_row_op(const T* a, const T* b, T* y, int64_t n) {
  for (int64_t j = 0; j < n; j++) store(y + j, apply(OP, load(a + j), load(b + j)));
}

template <typename T>
inline void contiguous_row(BinaryOp op, const T* a, const T* b, T* y, int64_t n) {
  switch (op) {
    case BinaryOp::Add: return contiguous_row_op<BinaryOp::Add>(a, b, y, n);
    case BinaryOp::Sub: return contiguous_row_op<BinaryOp::Sub>(a, b, y, n);
    case BinaryOp::Mul: return contiguous_row_op<BinaryOp::Mul>(a, b, y, n);
    case BinaryOp::Div: return contiguous_row_op<BinaryOp::Div>(a, b, y, n);
  }
}

// Iterates the rows (all dims but the last) of a contiguous output of `rank` dims,
// giving each row's offsets into up to two strided inputs.
struct RowWalker {
  int rank;
  const int64_t* dims;
  int64_t idx[kMaxRank] = {};
  RowWalker(int rank, const int64_t* dims, int64_t row) : rank(rank), dims(dims) {
    for (int d = rank - 2; d >= 0; d--) {
      idx[d] = row % dims[d];
      row /= dims[d];
    }
  }
  int64_t offset(const int64_t* strides) const {
    int64_t off = 0;
    for (int d = 0; d + 1 < rank; d++) off += idx[d] * strides[d];
    return off;
  }
  void next() {
    for (int d = rank - 2; d >= 0; d--) {
      if (++idx[d] < dims[d]) return;
      idx[d] = 0;
    }
  }
};

}  // namespace

void fill(DType dt, void* out, int64_t n, double value) {
  if (dt == DType::I32) {
    int32_t v = int32_t(value);
    parallel_for(0, n, kGrain, [&](size_t lo, size_t hi) {
      for (size_t i = lo; i < hi; i++) static_cast<int32_t*>(out)[i] = v;
    });
    return;
  }
  dispatch_float(dt, "fill", [&](auto tag) {
    using T = decltype(tag);
    T* y = static_cast<T*>(out);
    parallel_for(0, n, kGrain, [&](size_t lo, size_t hi) {
      for (size_t i = lo; i < hi; i++) store(y + i, float(value));
    });
  });
}

namespace {

// The two casts of mixed precision as plain loops, which the compiler vectorises (the per-element switch below it
// does not: a 4096-element float32 → bfloat16 cast took 10 µs, and a batch-16 bf16 decoding step makes 23).
template <typename From, typename To>
void cast_run(const From* __restrict x, To* __restrict y, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if constexpr (std::is_same_v<To, uint16_t>) y[i] = f32_to_bf16(x[i]);
    else y[i] = bf16_to_f32(x[i]);
  }
}
template <typename From, typename To>
__attribute__((target("avx2"))) void cast_run_avx2(const From* __restrict x, To* __restrict y, size_t n) {
  cast_run(x, y, n);
}
const bool kCastAvx2 = has_avx2();

template <typename From, typename To>
void cast_float(const void* x, void* y, int64_t n) {
  parallel_for(0, n, kGrain, [&](size_t lo, size_t hi) {
    const From* xp = static_cast<const From*>(x) + lo;
    To* yp = static_cast<To*>(y) + lo;
    if (kCastAvx2) cast_run_avx2(xp, yp, hi - lo);
    else cast_run(xp, yp, hi - lo);
  });
}

}  // namespace

void cast(DType from, const void* x, DType to, void* y, int64_t n) {
  if (from == DType::F32 && to == DType::BF16) return cast_float<float, uint16_t>(x, y, n);
  if (from == DType::BF16 && to == DType::F32) return cast_float<uint16_t, float>(x, y, n);
  auto read = [&](int64_t i) -> float {
    switch (from) {
      case DType::F32: return static_cast<const float*>(x)[i];
      case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(x)[i]);
      case DType::I32: return float(static_cast<const int32_t*>(x)[i]);
    }
    return 0.f;
  };
  parallel_for(0, n, kGrain, [&](size_t lo, size_t hi) {
    if (from == DType::I32 && to == DType::I32) {
      std::memcpy(static_cast<int32_t*>(y) + lo, static_cast<const int32_t*>(x) + lo, (hi - lo) * 4);
      return;
    }
    for (size_t i = lo; i < hi; i++) {
      float v = read(int64_t(i));
      switch (to) {
        case DType::F32: static_cast<float*>(y)[i] = v; break;
        case DType::BF16: static_cast<uint16_t*>(y)[i] = f32_to_bf16(v); break;
        case DType::I32: static_cast<int32_t*>(y)[i] = std::isfinite(v) ? int32_t(v) : 0; break;
      }
    }
  });
}

void affine(DType dt, const void* x, void* y, int64_t n, float alpha, float beta) {
  dispatch_float(dt, "affine", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x);
    T* yp = static_cast<T*>(y);
    parallel_for(0, n, kGrain, [&](size_t lo, size_t hi) {
      for (size_t i = lo; i < hi; i++) store(yp + i, alpha * load(xp + i) + beta);
    });
  });
}

void binary(BinaryOp op, DType dt, const void* a, const int64_t* sa, const void* b, const int64_t* sb, void* out,
            const int64_t* dims, int rank) {
  MG_CHECK(rank >= 1 && rank <= kMaxRank, "binary: rank %d out of range", rank);
  int64_t cols = dims[rank - 1], rows = 1;
  for (int d = 0; d + 1 < rank; d++) rows *= dims[d];
  if (rows * cols == 0) return;
  dispatch_float(dt, "binary", [&](auto tag) {
    using T = decltype(tag);
    const T* ap = static_cast<const T*>(a);
    const T* bp = static_cast<const T*>(b);
    T* op_ = static_cast<T*>(out);
    int64_t a_col = sa[rank - 1], b_col = sb[rank - 1];
    int64_t grain_rows = std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1));
    parallel_for(0, rows, grain_rows, [&](size_t lo, size_t hi) {
      RowWalker walk(rank, dims, int64_t(lo));
      for (size_t r = lo; r < hi; r++, walk.next()) {
        const T* ar = ap + walk.offset(sa);
        const T* br = bp + walk.offset(sb);
        T* yr = op_ + int64_t(r) * cols;
        if (a_col == 1 && b_col == 1) {
          contiguous_row(op, ar, br, yr, cols);
        } else if (a_col == 1 && b_col == 0) {
          float bv = load(br);
          for (int64_t j = 0; j < cols; j++) store(yr + j, apply(op, load(ar + j), bv));
        } else {
          for (int64_t j = 0; j < cols; j++) store(yr + j, apply(op, load(ar + j * a_col), load(br + j * b_col)));
        }
      }
    });
  });
}

void strided_copy(DType dt, const void* x, const int64_t* sx, void* out, const int64_t* dims, int rank) {
  MG_CHECK(rank >= 1 && rank <= kMaxRank, "strided_copy: rank %d out of range", rank);
  int64_t cols = dims[rank - 1], rows = 1;
  for (int d = 0; d + 1 < rank; d++) rows *= dims[d];
  if (rows * cols == 0) return;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x);
    T* yp = static_cast<T*>(out);
    int64_t x_col = sx[rank - 1];
    int64_t grain_rows = std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1));
    parallel_for(0, rows, grain_rows, [&](size_t lo, size_t hi) {
      RowWalker walk(rank, dims, int64_t(lo));
      for (size_t r = lo; r < hi; r++, walk.next()) {
        const T* xr = xp + walk.offset(sx);
        T* yr = yp + int64_t(r) * cols;
        for (int64_t j = 0; j < cols; j++) yr[j] = xr[j * x_col];
      }
    });
  };
  // A copy moves bits, so each dtype is copied by its storage width.
  if (dtype_size(dt) == 2) run(uint16_t{});
  else run(uint32_t{});
}

void scatter_rows(DType dt, const void* src, const int32_t* positions, void* dst, int64_t B, int64_t T, int64_t n) {
  const size_t row = size_t(n) * dtype_size(dt);
  for (int64_t b = 0; b < B; b++) {
    const int64_t p = positions[b];
    if (p < 0 || p >= T) continue;
    std::memcpy(static_cast<char*>(dst) + size_t(b * T + p) * row, static_cast<const char*>(src) + size_t(b) * row, row);
  }
}

}  // namespace mg::cpu
