// N-API bindings of the op family "norm" (shared by the CPU and CUDA addons): argument checks, no math.
// Sizes come first, then (handle, element offset) per tensor, as in ops.cc.
#include <cmath>

#include "backend_kernels.h"
#include "binding.h"

namespace mg::binding {
namespace {

DType float_dtype(Args& args, const char* op) {
  DType dt = args.dtype("dtype");
  if (dt == DType::I32) fail("%s: dtype int32 is not supported (float32 or bfloat16)", op);
  return dt;
}

#define MG_OP(NAME) Napi::Value NAME(const Napi::CallbackInfo& info)

// (dtype, rows, d, eps, x, w, b, y, mean, rstd)
MG_OP(layerNormForward) {
  return guarded(info, "layerNorm", [&] {
    Args args(info, "layerNorm");
    DType dt = float_dtype(args, "layerNorm");
    int64_t rows = args.integer("rows"), d = args.integer("d", 1);
    double eps = args.number("eps");
    if (!(eps >= 0) || !std::isfinite(eps)) fail("layerNorm: eps must be a finite non-negative number (got %g)", eps);
    int64_t n = checked_mul(rows, d, "layerNorm");
    const void* x = args.tensor("x", dt, n);
    const void* w = args.tensor("weight", dt, d);
    const void* b = args.tensor("bias", dt, d);
    void* y = args.tensor("y", dt, n);
    float* mean = static_cast<float*>(args.tensor("mean", DType::F32, rows));
    float* rstd = static_cast<float*>(args.tensor("rstd", DType::F32, rows));
    if (n) K::layernorm_forward(dt, x, w, b, y, mean, rstd, rows, d, float(eps));
    return info.Env().Undefined();
  });
}

// (dtype, rows, d, x, w, mean, rstd, dy, dx, dw, db)
MG_OP(layerNormBackward) {
  return guarded(info, "layerNormBackward", [&] {
    Args args(info, "layerNormBackward");
    DType dt = float_dtype(args, "layerNormBackward");
    int64_t rows = args.integer("rows"), d = args.integer("d", 1);
    int64_t n = checked_mul(rows, d, "layerNormBackward");
    const void* x = args.tensor("x", dt, n);
    const void* w = args.tensor("weight", dt, d);
    const float* mean = static_cast<const float*>(args.tensor("mean", DType::F32, rows));
    const float* rstd = static_cast<const float*>(args.tensor("rstd", DType::F32, rows));
    const void* dy = args.tensor("dy", dt, n);
    void* dx = args.tensor("dx", dt, n);
    void* dw = args.tensor("dweight", dt, d);
    void* db = args.tensor("dbias", dt, d);
    K::layernorm_backward(dt, x, w, mean, rstd, dy, dx, dw, db, rows, d);
    return info.Env().Undefined();
  });
}

// (dtype, n, vocab, d, ids, table, out)
MG_OP(embeddingForward) {
  return guarded(info, "embedding", [&] {
    Args args(info, "embedding");
    DType dt = float_dtype(args, "embedding");
    int64_t n = args.integer("n"), vocab = args.integer("vocab"), d = args.integer("d");
    const int32_t* ids = static_cast<const int32_t*>(args.tensor("ids", DType::I32, n));
    const void* table = args.tensor("table", dt, checked_mul(vocab, d, "embedding"));
    void* out = args.tensor("out", dt, checked_mul(n, d, "embedding"));
    if (n && d) K::embedding_forward(dt, ids, table, out, n, vocab, d);
    return info.Env().Undefined();
  });
}

// (dtype, n, vocab, d, ids, dout, dtable)
MG_OP(embeddingBackward) {
  return guarded(info, "embeddingBackward", [&] {
    Args args(info, "embeddingBackward");
    DType dt = float_dtype(args, "embeddingBackward");
    int64_t n = args.integer("n"), vocab = args.integer("vocab"), d = args.integer("d");
    const int32_t* ids = static_cast<const int32_t*>(args.tensor("ids", DType::I32, n));
    const void* dout = args.tensor("dout", dt, checked_mul(n, d, "embeddingBackward"));
    void* dtable = args.tensor("dtable", dt, checked_mul(vocab, d, "embeddingBackward"));
    if (vocab && d) K::embedding_backward(dt, ids, dout, dtable, n, vocab, d);
    return info.Env().Undefined();
  });
}

// (dtype, batch, t, dModel, heads, offset, inverse, x, y)
MG_OP(rope) {
  return guarded(info, "rope", [&] {
    Args args(info, "rope");
    DType dt = float_dtype(args, "rope");
    int64_t batch = args.integer("batch"), t = args.integer("t"), d_model = args.integer("dModel");
    int64_t heads = args.integer("heads", 1), offset = args.integer("positionOffset");
    bool inverse = args.flag("inverse");
    if (d_model % heads != 0) fail("rope: %lld heads do not divide the width %lld", (long long)heads, (long long)d_model);
    if ((d_model / heads) % 2 != 0) {
      fail("rope: the head width %lld (%lld / %lld heads) must be even", (long long)(d_model / heads), (long long)d_model,
           (long long)heads);
    }
    int64_t n = checked_mul(checked_mul(batch, t, "rope"), d_model, "rope");
    const void* x = args.tensor("x", dt, n);
    void* y = args.tensor("y", dt, n);
    if (n) K::rope(dt, x, y, batch, t, d_model, heads, offset, inverse);
    return info.Env().Undefined();
  });
}

// (dtype, t, d, offset, out)
MG_OP(sinusoidalPositions) {
  return guarded(info, "sinusoidalPositions", [&] {
    Args args(info, "sinusoidalPositions");
    DType dt = float_dtype(args, "sinusoidalPositions");
    int64_t t = args.integer("t"), d = args.integer("d"), offset = args.integer("positionOffset");
    if (d % 2 != 0) fail("sinusoidalPositions: the width %lld must be even", (long long)d);
    void* out = args.tensor("out", dt, checked_mul(t, d, "sinusoidalPositions"));
    if (t && d) K::sinusoidal_positions(dt, out, t, d, offset);
    return info.Env().Undefined();
  });
}

}  // namespace

void register_norm(Napi::Env env, Napi::Object exports) {
  exports.Set("layerNormForward", Napi::Function::New(env, layerNormForward, "layerNormForward"));
  exports.Set("layerNormBackward", Napi::Function::New(env, layerNormBackward, "layerNormBackward"));
  exports.Set("embeddingForward", Napi::Function::New(env, embeddingForward, "embeddingForward"));
  exports.Set("embeddingBackward", Napi::Function::New(env, embeddingBackward, "embeddingBackward"));
  exports.Set("rope", Napi::Function::New(env, rope, "rope"));
  exports.Set("sinusoidalPositions", Napi::Function::New(env, sinusoidalPositions, "sinusoidalPositions"));
}

}  // namespace mg::binding
