// Binds the op set of native/common/kernels.inc to JS, for whichever backend
// this file is compiled into (MG_BACKEND_CUDA selects the CUDA kernels).
// Sizes come first in every call, then (handle, element offset) per tensor, so
// each tensor's extent is checked against its storage before a kernel runs.
#include "binding.h"

#include "backend_kernels.h"

namespace mg::binding {
namespace {

int64_t product(const std::vector<int64_t>& dims, const char* op) {
  int64_t n = 1;
  for (int64_t d : dims) n = checked_mul(n, d, op);
  return n;
}

// Elements spanned by a strided view: 1 + sum (dim - 1) * stride (0 for an empty view).
int64_t strided_extent(const std::vector<int64_t>& dims, const std::vector<int64_t>& strides, const char* op) {
  if (dims.size() != strides.size()) fail("%s: %zu dims but %zu strides", op, dims.size(), strides.size());
  int64_t extent = 1;
  for (size_t i = 0; i < dims.size(); i++) {
    if (dims[i] == 0) return 0;
    extent += checked_mul(dims[i] - 1, strides[i], op);
  }
  return extent;
}

void check_rank(const std::vector<int64_t>& dims, const char* op) {
  if (dims.empty() || dims.size() > size_t(kMaxRank)) fail("%s: rank %zu is not in 1..%d", op, dims.size(), kMaxRank);
}

// Elements that a batched operand spans: (batch - 1) * stride + per-item size.
int64_t batched_extent(int64_t batch, int64_t stride, int64_t item, const char* op) {
  if (batch == 0 || item == 0) return 0;
  return checked_mul(batch - 1, stride, op) + item;
}

#define MG_OP(NAME) Napi::Value NAME(const Napi::CallbackInfo& info)

MG_OP(fill) {
  return guarded(info, "fill", [&] {
    Args args(info, "fill");
    DType dt = args.dtype("dtype");
    int64_t n = args.integer("n");
    double value = args.number("value");
    void* out = args.tensor("out", dt, n);
    if (n) K::fill(dt, out, n, value);
    return info.Env().Undefined();
  });
}

MG_OP(cast) {
  return guarded(info, "cast", [&] {
    Args args(info, "cast");
    DType from = args.dtype("from"), to = args.dtype("to");
    int64_t n = args.integer("n");
    const void* x = args.tensor("x", from, n);
    void* y = args.tensor("y", to, n);
    if (n) K::cast(from, x, to, y, n);
    return info.Env().Undefined();
  });
}

MG_OP(affine) {
  return guarded(info, "affine", [&] {
    Args args(info, "affine");
    DType dt = args.dtype("dtype");
    int64_t n = args.integer("n");
    float alpha = float(args.number("alpha")), beta = float(args.number("beta"));
    const void* x = args.tensor("x", dt, n);
    void* y = args.tensor("y", dt, n);
    if (n) K::affine(dt, x, y, n, alpha, beta);
    return info.Env().Undefined();
  });
}

MG_OP(binary) {
  return guarded(info, "binary", [&] {
    Args args(info, "binary");
    int64_t code = args.integer("op");
    if (code > 3) fail("binary: unknown op code %lld", (long long)code);
    DType dt = args.dtype("dtype");
    auto dims = args.integers("dims");
    auto sa = args.integers("aStrides"), sb = args.integers("bStrides");
    check_rank(dims, "binary");
    const void* a = args.tensor("a", dt, strided_extent(dims, sa, "binary"));
    const void* b = args.tensor("b", dt, strided_extent(dims, sb, "binary"));
    int64_t n = product(dims, "binary");
    void* out = args.tensor("out", dt, n);
    if (n) K::binary(BinaryOp(code), dt, a, sa.data(), b, sb.data(), out, dims.data(), int(dims.size()));
    return info.Env().Undefined();
  });
}

MG_OP(stridedCopy) {
  return guarded(info, "stridedCopy", [&] {
    Args args(info, "stridedCopy");
    DType dt = args.dtype("dtype");
    auto dims = args.integers("dims");
    auto sx = args.integers("xStrides");
    check_rank(dims, "stridedCopy");
    const void* x = args.tensor("x", dt, strided_extent(dims, sx, "stridedCopy"));
    int64_t n = product(dims, "stridedCopy");
    void* out = args.tensor("out", dt, n);
    if (n) K::strided_copy(dt, x, sx.data(), out, dims.data(), int(dims.size()));
    return info.Env().Undefined();
  });
}

MG_OP(sumAxis) {
  return guarded(info, "sumAxis", [&] {
    Args args(info, "sumAxis");
    DType dt = args.dtype("dtype");
    int64_t outer = args.integer("outer"), reduce = args.integer("reduce"), inner = args.integer("inner");
    bool accumulate = args.flag("accumulate");
    int64_t n_out = checked_mul(outer, inner, "sumAxis");
    const void* x = args.tensor("x", dt, checked_mul(n_out, reduce, "sumAxis"));
    void* y = args.tensor("y", dt, n_out);
    if (n_out) K::sum_axis(dt, x, y, outer, reduce, inner, accumulate);
    return info.Env().Undefined();
  });
}

MG_OP(softmaxForward) {
  return guarded(info, "softmaxForward", [&] {
    Args args(info, "softmaxForward");
    DType dt = args.dtype("dtype");
    int64_t rows = args.integer("rows"), cols = args.integer("cols");
    int64_t n = checked_mul(rows, cols, "softmaxForward");
    const void* x = args.tensor("x", dt, n);
    void* y = args.tensor("y", dt, n);
    if (n) K::softmax_forward(dt, x, y, rows, cols);
    return info.Env().Undefined();
  });
}

MG_OP(softmaxBackward) {
  return guarded(info, "softmaxBackward", [&] {
    Args args(info, "softmaxBackward");
    DType dt = args.dtype("dtype");
    int64_t rows = args.integer("rows"), cols = args.integer("cols");
    int64_t n = checked_mul(rows, cols, "softmaxBackward");
    const void* y = args.tensor("y", dt, n);
    const void* dy = args.tensor("dy", dt, n);
    void* dx = args.tensor("dx", dt, n);
    if (n) K::softmax_backward(dt, y, dy, dx, rows, cols);
    return info.Env().Undefined();
  });
}

MG_OP(matmul) {
  return guarded(info, "matmul", [&] {
    Args args(info, "matmul");
    DType ab = args.dtype("abDtype"), cd = args.dtype("cDtype");
    int64_t batch = args.integer("batch"), m = args.integer("m"), n = args.integer("n"), k = args.integer("k");
    bool ta = args.flag("transA"), tb = args.flag("transB");
    int64_t sa = args.integer("strideA"), sb = args.integer("strideB"), sc = args.integer("strideC");
    float beta = float(args.number("beta"));
    const void* a = args.tensor("a", ab, batched_extent(batch, sa, checked_mul(m, k, "matmul"), "matmul"));
    const void* b = args.tensor("b", ab, batched_extent(batch, sb, checked_mul(k, n, "matmul"), "matmul"));
    void* c = args.tensor("c", cd, batched_extent(batch, sc, checked_mul(m, n, "matmul"), "matmul"));
    if (batch && m && n) K::matmul(ab, a, b, cd, c, batch, m, n, k, ta, tb, sa, sb, sc, beta);
    return info.Env().Undefined();
  });
}

MG_OP(scatterRows) {
  return guarded(info, "scatterRows", [&] {
    Args args(info, "scatterRows");
    DType dt = args.dtype("dtype");
    int64_t B = args.integer("B"), T = args.integer("T"), n = args.integer("n");
    const void* src = args.tensor("src", dt, checked_mul(B, n, "scatterRows"));
    auto positions = static_cast<const int32_t*>(args.tensor("positions", DType::I32, B));
    void* dst = args.tensor("dst", dt, checked_mul(checked_mul(B, T, "scatterRows"), n, "scatterRows"));
    if (B && n) K::scatter_rows(dt, src, positions, dst, B, T, n);
    return info.Env().Undefined();
  });
}

}  // namespace

void register_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("scatterRows", Napi::Function::New(env, scatterRows, "scatterRows"));
  exports.Set("fill", Napi::Function::New(env, fill, "fill"));
  exports.Set("cast", Napi::Function::New(env, cast, "cast"));
  exports.Set("affine", Napi::Function::New(env, affine, "affine"));
  exports.Set("binary", Napi::Function::New(env, binary, "binary"));
  exports.Set("stridedCopy", Napi::Function::New(env, stridedCopy, "stridedCopy"));
  exports.Set("sumAxis", Napi::Function::New(env, sumAxis, "sumAxis"));
  exports.Set("softmaxForward", Napi::Function::New(env, softmaxForward, "softmaxForward"));
  exports.Set("softmaxBackward", Napi::Function::New(env, softmaxBackward, "softmaxBackward"));
  exports.Set("matmul", Napi::Function::New(env, matmul, "matmul"));
}

}  // namespace mg::binding
