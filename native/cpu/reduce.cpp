// Reductions on the CPU: sums over one axis and the row softmax with its
// backward. Accumulation is in double for sums, so that the reference is
// more accurate than the float32 it is compared against.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/threadpool.h"
#include "elem.h"
#include "kernels.h"

namespace mg::cpu {

void sum_axis(DType dt, const void* x, void* y, int64_t outer, int64_t reduce, int64_t inner, bool accumulate) {
  dispatch_float(dt, "sum", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x);
    T* yp = static_cast<T*>(y);
    if (inner == 1) {  // contiguous rows: one dot-like loop per output
      parallel_for(0, outer, std::max<int64_t>(1, 16384 / std::max<int64_t>(reduce, 1)), [&](size_t lo, size_t hi) {
        for (size_t o = lo; o < hi; o++) {
          const T* row = xp + int64_t(o) * reduce;
          double acc = 0;
          for (int64_t r = 0; r < reduce; r++) acc += load(row + r);
          store(yp + o, float(accumulate ? acc + load(yp + o) : acc));
        }
      });
      return;
    }
    // Sum whole rows of `inner` contiguous elements: vectorisable, and split over outer x inner blocks.
    const int64_t block = 256;
    int64_t blocks_per_outer = (inner + block - 1) / block;
    parallel_for(0, outer * blocks_per_outer, 1, [&](size_t lo, size_t hi) {
      std::vector<double> acc(block);
      for (size_t t = lo; t < hi; t++) {
        int64_t o = int64_t(t) / blocks_per_outer;
        int64_t i0 = (int64_t(t) % blocks_per_outer) * block;
        int64_t len = std::min(block, inner - i0);
        std::fill(acc.begin(), acc.begin() + len, 0.0);
        for (int64_t r = 0; r < reduce; r++) {
          const T* row = xp + (o * reduce + r) * inner + i0;
          for (int64_t i = 0; i < len; i++) acc[i] += load(row + i);
        }
        T* yr = yp + o * inner + i0;
        for (int64_t i = 0; i < len; i++) store(yr + i, float(accumulate ? acc[i] + load(yr + i) : acc[i]));
      }
    });
  });
}

void softmax_forward(DType dt, const void* x, void* y, int64_t rows, int64_t cols) {
  dispatch_float(dt, "softmax", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x);
    T* yp = static_cast<T*>(y);
    parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1)), [&](size_t lo, size_t hi) {
      std::vector<float> e(cols);
      for (size_t r = lo; r < hi; r++) {
        const T* xr = xp + int64_t(r) * cols;
        T* yr = yp + int64_t(r) * cols;
        float mx = -INFINITY;
        for (int64_t j = 0; j < cols; j++) mx = std::max(mx, load(xr + j));
        double total = 0;
        for (int64_t j = 0; j < cols; j++) {
          e[j] = std::exp(load(xr + j) - mx);
          total += e[j];
        }
        float inv = float(1.0 / total);
        for (int64_t j = 0; j < cols; j++) store(yr + j, e[j] * inv);
      }
    });
  });
}

void softmax_backward(DType dt, const void* y, const void* dy, void* dx, int64_t rows, int64_t cols) {
  dispatch_float(dt, "softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* yp = static_cast<const T*>(y);
    const T* gp = static_cast<const T*>(dy);
    T* dp = static_cast<T*>(dx);
    parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1)), [&](size_t lo, size_t hi) {
      for (size_t r = lo; r < hi; r++) {
        const T* yr = yp + int64_t(r) * cols;
        const T* gr = gp + int64_t(r) * cols;
        T* dr = dp + int64_t(r) * cols;
        double dot = 0;
        for (int64_t j = 0; j < cols; j++) dot += double(load(yr + j)) * load(gr + j);
        for (int64_t j = 0; j < cols; j++) store(dr + j, load(yr + j) * (load(gr + j) - float(dot)));
      }
    });
  });
}

}  // namespace mg::cpu
