// N-API bindings of the op family "memwrite" (shared by the CPU and CUDA addons): memwriteForward,
// memwriteBackward, memwriteStats.
// Sizes first, then (handle, element offset) per tensor, each checked against its storage; float32 only. The
// pointer's positional bias comes as its column count (0: none) and then an optional tensor (null, 0 when none).
#include "backend_kernels.h"
#include "binding.h"

namespace mg::binding {
namespace {


struct Sizes {
  int64_t B, S, T, D;
};

// B, S, T, D, each at least 1, and small enough that no extent (B·S·(4D + T), 2D², ...) can overflow.
Sizes read_sizes(Args& args, const char* op) {
  Sizes z{args.integer("B", 1), args.integer("S", 1), args.integer("T", 1), args.integer("D", 1)};
  double rows = double(z.B) * double(z.S) + double(z.B) * double(z.T);
  double d = double(z.D);
  if (rows * (4 * d + double(z.T)) + double(z.B) * double(z.S) * double(z.T) + 2 * d * d > 9e15) {
    fail("%s: sizes B=%lld S=%lld T=%lld D=%lld are too large", op, (long long)z.B, (long long)z.S, (long long)z.T,
         (long long)z.D);
  }
  return z;
}

// The pointer's positional bias (SPEC v2): its column count, 0 when there is none, else at least T.
int64_t pointer_bias_cols(Args& args, int64_t T, const char* op) {
  const int64_t cols = args.integer("biasCols");
  if (cols != 0 && cols < T) fail("%s: the pointer bias has %lld columns, fewer than the segment's %lld tokens", op, (long long)cols, (long long)T);
  return cols;
}

Napi::Value memwrite_forward(const Napi::CallbackInfo& info) {
  return guarded(info, "memwriteForward", [&] {
    Args args(info, "memwriteForward");
    auto [B, S, T, D] = read_sizes(args, "memwriteForward");
    const float* m = static_cast<const float*>(args.tensor("M", DType::F32, B * S * D));
    const float* mq = static_cast<const float*>(args.tensor("mq", DType::F32, B * S * D));
    const float* ck = static_cast<const float*>(args.tensor("ck", DType::F32, B * T * D));
    const float* cv = static_cast<const float*>(args.tensor("cv", DType::F32, B * T * D));
    const bool has_wv = args.flag("hasValueWeight");
    const float* wv = static_cast<const float*>(args.optional_tensor("valueWeight", has_wv, DType::F32, D * D));
    const float* w = static_cast<const float*>(args.tensor("updateWeight", DType::F32, D * 2 * D));
    const float* bias = static_cast<const float*>(args.tensor("updateBias", DType::F32, D));
    const int64_t bias_cols = pointer_bias_cols(args, T, "memwriteForward");
    const float* ptr_bias = static_cast<const float*>(args.optional_tensor("ptrBias", bias_cols > 0, DType::F32, S * bias_cols));
    float* out = static_cast<float*>(args.tensor("out", DType::F32, B * S * D));
    float* alpha = static_cast<float*>(args.tensor("alpha", DType::F32, B * S * T));
    float* x = static_cast<float*>(args.tensor("x", DType::F32, B * S * 2 * D));
    float* u = static_cast<float*>(args.tensor("u", DType::F32, B * S * D));
    float* zp = static_cast<float*>(args.optional_tensor("zp", has_wv, DType::F32, B * S * D));
    K::memwrite_forward(B, S, T, D, m, mq, ck, cv, wv, w, bias, ptr_bias, bias_cols, out, alpha, x, u, zp);
    return info.Env().Undefined();
  });
}

Napi::Value memwrite_backward(const Napi::CallbackInfo& info) {
  return guarded(info, "memwriteBackward", [&] {
    Args args(info, "memwriteBackward");
    auto [B, S, T, D] = read_sizes(args, "memwriteBackward");
    const float* dout = static_cast<const float*>(args.tensor("dout", DType::F32, B * S * D));
    const float* mq = static_cast<const float*>(args.tensor("mq", DType::F32, B * S * D));
    const float* ck = static_cast<const float*>(args.tensor("ck", DType::F32, B * T * D));
    const float* cv = static_cast<const float*>(args.tensor("cv", DType::F32, B * T * D));
    const bool has_wv = args.flag("hasValueWeight");
    const float* wv = static_cast<const float*>(args.optional_tensor("valueWeight", has_wv, DType::F32, D * D));
    const float* w = static_cast<const float*>(args.tensor("updateWeight", DType::F32, D * 2 * D));
    const float* alpha = static_cast<const float*>(args.tensor("alpha", DType::F32, B * S * T));
    const float* x = static_cast<const float*>(args.tensor("x", DType::F32, B * S * 2 * D));
    const float* u = static_cast<const float*>(args.tensor("u", DType::F32, B * S * D));
    const float* zp = static_cast<const float*>(args.optional_tensor("zp", has_wv, DType::F32, B * S * D));
    float* dm = static_cast<float*>(args.tensor("dM", DType::F32, B * S * D));
    float* dmq = static_cast<float*>(args.tensor("dmq", DType::F32, B * S * D));
    float* dck = static_cast<float*>(args.tensor("dck", DType::F32, B * T * D));
    float* dcv = static_cast<float*>(args.tensor("dcv", DType::F32, B * T * D));
    float* dwv = static_cast<float*>(args.optional_tensor("dValueWeight", has_wv, DType::F32, D * D));
    float* dw = static_cast<float*>(args.tensor("dUpdateWeight", DType::F32, D * 2 * D));
    float* dbias = static_cast<float*>(args.tensor("dUpdateBias", DType::F32, D));
    const int64_t bias_cols = pointer_bias_cols(args, T, "memwriteBackward");
    float* d_ptr_bias = static_cast<float*>(args.optional_tensor("dPtrBias", bias_cols > 0, DType::F32, S * bias_cols));
    float* work = static_cast<float*>(args.tensor("workspace", DType::F32, K::memwrite_workspace(B, S, T, D)));
    K::memwrite_backward(B, S, T, D, dout, mq, ck, cv, wv, w, alpha, x, u, zp, bias_cols, dm, dmq, dck, dcv, dwv,
                         dw, dbias, d_ptr_bias, work);
    return info.Env().Undefined();
  });
}

// The whole write of SPEC §3 from the layer's output h, as one call: c = LN(h; lnW, lnB) (ε 1e-5), mq = M·pq (pq =
// Wpqᵀ·Wpk, the slot queries in token space), then memwrite_forward(M, mq, c, c, ...). Composed here from the
// backend's own kernels (layer norm, GEMM, memwrite), so both backends run it; what it saves is the JavaScript of
// three ops and their gradient sums. Saves c, mean, rstd and mq for the backward beside memwrite's alpha, x, u, zp.
Napi::Value memwrite_hidden_forward(const Napi::CallbackInfo& info) {
  return guarded(info, "memwriteHiddenForward", [&] {
    Args args(info, "memwriteHiddenForward");
    auto [B, S, T, D] = read_sizes(args, "memwriteHiddenForward");
    const float* m = static_cast<const float*>(args.tensor("M", DType::F32, B * S * D));
    const float* h = static_cast<const float*>(args.tensor("h", DType::F32, B * T * D));
    const float* ln_w = static_cast<const float*>(args.tensor("lnWeight", DType::F32, D));
    const float* ln_b = static_cast<const float*>(args.tensor("lnBias", DType::F32, D));
    const float* pq = static_cast<const float*>(args.tensor("pointerQuery", DType::F32, D * D));
    const float* wv = static_cast<const float*>(args.tensor("valueWeight", DType::F32, D * D));
    const float* w = static_cast<const float*>(args.tensor("updateWeight", DType::F32, D * 2 * D));
    const float* bias = static_cast<const float*>(args.tensor("updateBias", DType::F32, D));
    const int64_t bias_cols = pointer_bias_cols(args, T, "memwriteHiddenForward");
    const float* ptr_bias = static_cast<const float*>(args.optional_tensor("ptrBias", bias_cols > 0, DType::F32, S * bias_cols));
    float* out = static_cast<float*>(args.tensor("out", DType::F32, B * S * D));
    float* c = static_cast<float*>(args.tensor("c", DType::F32, B * T * D));
    float* mean = static_cast<float*>(args.tensor("mean", DType::F32, B * T));
    float* rstd = static_cast<float*>(args.tensor("rstd", DType::F32, B * T));
    float* mq = static_cast<float*>(args.tensor("mq", DType::F32, B * S * D));
    float* alpha = static_cast<float*>(args.tensor("alpha", DType::F32, B * S * T));
    float* x = static_cast<float*>(args.tensor("x", DType::F32, B * S * 2 * D));
    float* u = static_cast<float*>(args.tensor("u", DType::F32, B * S * D));
    float* zp = static_cast<float*>(args.tensor("zp", DType::F32, B * S * D));
    K::layernorm_forward(DType::F32, h, ln_w, ln_b, c, mean, rstd, B * T, D, 1e-5f);
    K::matmul(DType::F32, m, pq, DType::F32, mq, 1, B * S, D, D, false, false, 0, 0, 0, 0.f);
    K::memwrite_forward(B, S, T, D, m, mq, c, c, wv, w, bias, ptr_bias, bias_cols, out, alpha, x, u, zp);
    return info.Env().Undefined();
  });
}

// Elements of float32 workspace memwriteHiddenBackward needs: dck and dcv [B,T,D] each, dmq [B,S,D], memwrite's.
int64_t hidden_workspace(int64_t B, int64_t S, int64_t T, int64_t D) {
  return 2 * B * T * D + B * S * D + K::memwrite_workspace(B, S, T, D);
}

// The backward of memwriteHiddenForward: memwrite_backward, then dc = dck + dcv through the layer norm to dh, and
// mq = M·pq's gradients dM += dmq·pqᵀ, dpq = Mᵀ·dmq. Writes (=) every gradient.
Napi::Value memwrite_hidden_backward(const Napi::CallbackInfo& info) {
  return guarded(info, "memwriteHiddenBackward", [&] {
    Args args(info, "memwriteHiddenBackward");
    auto [B, S, T, D] = read_sizes(args, "memwriteHiddenBackward");
    const int64_t R = B * S, N = B * T * D;
    const float* dout = static_cast<const float*>(args.tensor("dout", DType::F32, R * D));
    const float* m = static_cast<const float*>(args.tensor("M", DType::F32, R * D));
    const float* h = static_cast<const float*>(args.tensor("h", DType::F32, N));
    const float* ln_w = static_cast<const float*>(args.tensor("lnWeight", DType::F32, D));
    const float* pq = static_cast<const float*>(args.tensor("pointerQuery", DType::F32, D * D));
    const float* wv = static_cast<const float*>(args.tensor("valueWeight", DType::F32, D * D));
    const float* w = static_cast<const float*>(args.tensor("updateWeight", DType::F32, D * 2 * D));
    const float* c = static_cast<const float*>(args.tensor("c", DType::F32, N));
    const float* mean = static_cast<const float*>(args.tensor("mean", DType::F32, B * T));
    const float* rstd = static_cast<const float*>(args.tensor("rstd", DType::F32, B * T));
    const float* mq = static_cast<const float*>(args.tensor("mq", DType::F32, R * D));
    const float* alpha = static_cast<const float*>(args.tensor("alpha", DType::F32, R * T));
    const float* x = static_cast<const float*>(args.tensor("x", DType::F32, R * 2 * D));
    const float* u = static_cast<const float*>(args.tensor("u", DType::F32, R * D));
    const float* zp = static_cast<const float*>(args.tensor("zp", DType::F32, R * D));
    float* dm = static_cast<float*>(args.tensor("dM", DType::F32, R * D));
    float* dh = static_cast<float*>(args.tensor("dh", DType::F32, N));
    float* dln_w = static_cast<float*>(args.tensor("dLnWeight", DType::F32, D));
    float* dln_b = static_cast<float*>(args.tensor("dLnBias", DType::F32, D));
    float* dpq = static_cast<float*>(args.tensor("dPointerQuery", DType::F32, D * D));
    float* dwv = static_cast<float*>(args.tensor("dValueWeight", DType::F32, D * D));
    float* dw = static_cast<float*>(args.tensor("dUpdateWeight", DType::F32, D * 2 * D));
    float* dbias = static_cast<float*>(args.tensor("dUpdateBias", DType::F32, D));
    const int64_t bias_cols = pointer_bias_cols(args, T, "memwriteHiddenBackward");
    float* d_ptr_bias = static_cast<float*>(args.optional_tensor("dPtrBias", bias_cols > 0, DType::F32, S * bias_cols));
    float* work = static_cast<float*>(args.tensor("workspace", DType::F32, hidden_workspace(B, S, T, D)));
    float* dck = work;
    float* dcv = dck + N;
    float* dmq = dcv + N;
    K::memwrite_backward(B, S, T, D, dout, mq, c, c, wv, w, alpha, x, u, zp, bias_cols, dm, dmq, dck, dcv, dwv, dw,
                         dbias, d_ptr_bias, dmq + R * D);
    const int64_t one = 1, dims = N;
    K::binary(BinaryOp::Add, DType::F32, dck, &one, dcv, &one, dck, &dims, 1);  // dc, into dck
    K::layernorm_backward(DType::F32, h, ln_w, mean, rstd, dck, dh, dln_w, dln_b, B * T, D);
    K::matmul(DType::F32, dmq, pq, DType::F32, dm, 1, R, D, D, false, true, 0, 0, 0, 1.f);   // dM += dmq·pqᵀ
    K::matmul(DType::F32, m, dmq, DType::F32, dpq, 1, D, D, R, true, false, 0, 0, 0, 0.f);   // dpq = Mᵀ·dmq
    return info.Env().Undefined();
  });
}

// Returns [meanGate, pointerEntropy].
Napi::Value memwrite_stats(const Napi::CallbackInfo& info) {
  return guarded(info, "memwriteStats", [&] {
    Args args(info, "memwriteStats");
    auto [B, S, T, D] = read_sizes(args, "memwriteStats");
    const float* alpha = static_cast<const float*>(args.tensor("alpha", DType::F32, B * S * T));
    const float* u = static_cast<const float*>(args.tensor("u", DType::F32, B * S * D));
    double stats[2];
    K::memwrite_stats(B, S, T, D, alpha, u, stats);
    Napi::Array result = Napi::Array::New(info.Env(), 2);
    result.Set(uint32_t(0), Napi::Number::New(info.Env(), stats[0]));
    result.Set(uint32_t(1), Napi::Number::New(info.Env(), stats[1]));
    return result.As<Napi::Value>();
  });
}

}  // namespace

void register_memwrite(Napi::Env env, Napi::Object exports) {
  exports.Set("memwriteForward", Napi::Function::New(env, memwrite_forward, "memwriteForward"));
  exports.Set("memwriteBackward", Napi::Function::New(env, memwrite_backward, "memwriteBackward"));
  exports.Set("memwriteStats", Napi::Function::New(env, memwrite_stats, "memwriteStats"));
  exports.Set("memwriteHiddenForward", Napi::Function::New(env, memwrite_hidden_forward, "memwriteHiddenForward"));
  exports.Set("memwriteHiddenBackward", Napi::Function::New(env, memwrite_hidden_backward, "memwriteHiddenBackward"));
  exports.Set("memwriteHiddenWorkspace", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
    return guarded(info, "memwriteHiddenWorkspace", [&] {
      Args args(info, "memwriteHiddenWorkspace");
      auto [B, S, T, D] = read_sizes(args, "memwriteHiddenWorkspace");
      return Napi::Number::New(info.Env(), double(hidden_workspace(B, S, T, D)));
    });
  }, "memwriteHiddenWorkspace"));
}

}  // namespace mg::binding
