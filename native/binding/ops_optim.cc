// N-API bindings of the op family "optim" (CPU addon): argument checks, no math.
// A list of tensors is passed as sizes (number[]) plus, per role, a flat array
// [handle0, offset0, handle1, offset1, ...] of float32 tensors, each checked against its storage.
#include <cmath>

#include "backend_kernels.h"
#include "binding.h"

namespace mg::binding {
namespace {

std::vector<float*> tensor_list(Args& args, const char* name, const std::vector<int64_t>& sizes) {
  Napi::Value v = args.next(name);
  if (!v.IsArray()) fail("argument '%s' must be an array of (handle, offset) pairs", name);
  Napi::Array arr = v.As<Napi::Array>();
  if (arr.Length() != 2 * sizes.size()) {
    fail("argument '%s' has %u entries; expected %zu (handle, offset) pairs", name, arr.Length(), sizes.size());
  }
  std::vector<float*> out(sizes.size());
  for (size_t i = 0; i < sizes.size(); i++) {
    Napi::Value off = arr.Get(uint32_t(2 * i + 1));
    double d = off.IsNumber() ? off.As<Napi::Number>().DoubleValue() : -1;
    if (d < 0 || d != std::floor(d)) fail("argument '%s': offset %zu must be a non-negative integer", name, i);
    out[i] = static_cast<float*>(storage_ptr(arr.Get(uint32_t(2 * i)), int64_t(d) * 4, sizes[i] * 4, name));
  }
  return out;
}

std::vector<float> float_list(Args& args, const char* name, size_t count) {
  Napi::Value v = args.next(name);
  if (!v.IsArray() || v.As<Napi::Array>().Length() != count) fail("argument '%s' must be an array of %zu numbers", name, count);
  Napi::Array arr = v.As<Napi::Array>();
  std::vector<float> out(count);
  for (size_t i = 0; i < count; i++) {
    Napi::Value e = arr.Get(uint32_t(i));
    if (!e.IsNumber()) fail("argument '%s' must be an array of numbers", name);
    out[i] = float(e.As<Napi::Number>().DoubleValue());
    if (!std::isfinite(out[i])) fail("argument '%s' entry %zu is not finite", name, i);
  }
  return out;
}

// (sizes, decay[], stepSize[], bc2Sqrt[], beta1, beta2, eps, params, grads, m, v)
Napi::Value adamw_step(const Napi::CallbackInfo& info) {
  return guarded(info, "adamwStep", [&] {
    Args args(info, "adamwStep");
    auto sizes = args.integers("sizes");
    auto decay = float_list(args, "decay", sizes.size());
    auto step_size = float_list(args, "stepSize", sizes.size());
    auto bc2_sqrt = float_list(args, "bc2Sqrt", sizes.size());
    float beta1 = float(args.number("beta1")), beta2 = float(args.number("beta2")), eps = float(args.number("eps"));
    if (!(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1)) fail("adamwStep: betas must lie in [0, 1)");
    if (!(eps >= 0)) fail("adamwStep: eps must be non-negative");
    for (float b : bc2_sqrt) if (!(b > 0)) fail("adamwStep: bias corrections must be positive");
    auto w = tensor_list(args, "params", sizes);
    auto g = tensor_list(args, "grads", sizes);
    auto m = tensor_list(args, "m", sizes);
    auto v = tensor_list(args, "v", sizes);
    std::vector<const float*> gc(g.begin(), g.end());
    K::adamw_step(int64_t(sizes.size()), sizes.data(), w.data(), gc.data(), m.data(), v.data(), decay.data(),
                        step_size.data(), bc2_sqrt.data(), beta1, beta2, eps);
    return info.Env().Undefined();
  });
}

// (sizes, lr, params, grads)
Napi::Value sgd_step(const Napi::CallbackInfo& info) {
  return guarded(info, "sgdStep", [&] {
    Args args(info, "sgdStep");
    auto sizes = args.integers("sizes");
    float lr = float(args.number("lr"));
    auto w = tensor_list(args, "params", sizes);
    auto g = tensor_list(args, "grads", sizes);
    std::vector<const float*> gc(g.begin(), g.end());
    K::sgd_step(int64_t(sizes.size()), sizes.data(), w.data(), gc.data(), lr);
    return info.Env().Undefined();
  });
}

// (sizes, tensors) -> Σ x² (double)
Napi::Value sum_squares(const Napi::CallbackInfo& info) {
  return guarded(info, "sumSquares", [&] {
    Args args(info, "sumSquares");
    auto sizes = args.integers("sizes");
    auto x = tensor_list(args, "tensors", sizes);
    std::vector<const float*> xc(x.begin(), x.end());
    return Napi::Number::New(info.Env(), K::sum_squares(int64_t(sizes.size()), sizes.data(), xc.data()));
  });
}

// (sizes, factor, tensors)
Napi::Value scale_tensors(const Napi::CallbackInfo& info) {
  return guarded(info, "scaleTensors", [&] {
    Args args(info, "scaleTensors");
    auto sizes = args.integers("sizes");
    float factor = float(args.number("factor"));
    auto x = tensor_list(args, "tensors", sizes);
    K::scale_tensors(int64_t(sizes.size()), sizes.data(), x.data(), factor);
    return info.Env().Undefined();
  });
}

}  // namespace

void register_optim(Napi::Env env, Napi::Object exports) {
  exports.Set("adamwStep", Napi::Function::New(env, adamw_step, "adamwStep"));
  exports.Set("sgdStep", Napi::Function::New(env, sgd_step, "sgdStep"));
  exports.Set("sumSquares", Napi::Function::New(env, sum_squares, "sumSquares"));
  exports.Set("scaleTensors", Napi::Function::New(env, scale_tensors, "scaleTensors"));
}

}  // namespace mg::binding
