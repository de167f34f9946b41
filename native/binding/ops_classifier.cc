// N-API bindings of the op family "classifier" (shared by the CPU and CUDA addons): argument parsing and
// size checks, no math.
#include "backend_kernels.h"
#include "binding.h"

namespace mg::binding {
namespace {

// tokenNLLForward(rows, vocab, dim, rowChunk, vocabChunk, hf, tokEmb, targets, nll, lse)
Napi::Value tokenNLLForward(const Napi::CallbackInfo& info) {
  return guarded(info, "tokenNLL", [&] {
    Args args(info, "tokenNLL");
    int64_t rows = args.integer("rows"), vocab = args.integer("vocab"), dim = args.integer("dim");
    int64_t row_chunk = args.integer("rowChunk", 1), vocab_chunk = args.integer("vocabChunk", 1);
    if (vocab == 0 && rows > 0) fail("tokenNLL: the vocabulary is empty");
    auto hf = static_cast<const float*>(args.tensor("hf", DType::F32, checked_mul(rows, dim, "tokenNLL")));
    auto emb = static_cast<const float*>(args.tensor("tokEmb", DType::F32, checked_mul(vocab, dim, "tokenNLL")));
    auto targets = static_cast<const int32_t*>(args.tensor("targets", DType::I32, rows));
    auto nll = static_cast<float*>(args.tensor("nll", DType::F32, rows));
    auto lse = static_cast<float*>(args.tensor("lse", DType::F32, rows));
    K::token_nll_forward(hf, emb, targets, nll, lse, rows, vocab, dim, row_chunk, vocab_chunk);
    return info.Env().Undefined();
  });
}

// tokenNLLBackward(rows, vocab, dim, rowChunk, vocabChunk, hf, tokEmb, targets, lse, coef, dhf, dTokEmb)
Napi::Value tokenNLLBackward(const Napi::CallbackInfo& info) {
  return guarded(info, "tokenNLL backward", [&] {
    Args args(info, "tokenNLL backward");
    int64_t rows = args.integer("rows"), vocab = args.integer("vocab"), dim = args.integer("dim");
    int64_t row_chunk = args.integer("rowChunk", 1), vocab_chunk = args.integer("vocabChunk", 1);
    if (vocab == 0 && rows > 0) fail("tokenNLL backward: the vocabulary is empty");
    auto hf = static_cast<const float*>(args.tensor("hf", DType::F32, checked_mul(rows, dim, "tokenNLL")));
    auto emb = static_cast<const float*>(args.tensor("tokEmb", DType::F32, checked_mul(vocab, dim, "tokenNLL")));
    auto targets = static_cast<const int32_t*>(args.tensor("targets", DType::I32, rows));
    auto lse = static_cast<const float*>(args.tensor("lse", DType::F32, rows));
    auto coef = static_cast<const float*>(args.tensor("coef", DType::F32, rows));
    auto dhf = static_cast<float*>(args.tensor("dhf", DType::F32, checked_mul(rows, dim, "tokenNLL")));
    auto demb = static_cast<float*>(args.tensor("dTokEmb", DType::F32, checked_mul(vocab, dim, "tokenNLL")));
    K::token_nll_backward(hf, emb, targets, lse, coef, dhf, demb, rows, vocab, dim, row_chunk, vocab_chunk);
    return info.Env().Undefined();
  });
}

// copyMixForward(batch, len, dim, vocab, cq, ck, genLogit, inputs, targets, nll (in/out), stats [rows, 3])
Napi::Value copyMixForward(const Napi::CallbackInfo& info) {
  return guarded(info, "tokenNLL", [&] {
    Args args(info, "tokenNLL");
    int64_t batch = args.integer("batch"), len = args.integer("len"), dim = args.integer("dim");
    int64_t vocab = args.integer("vocab");
    int64_t rows = checked_mul(batch, len, "tokenNLL");
    if (dim == 0 && rows > 0) fail("tokenNLL: the copy head needs a model width D > 0");
    auto cq = static_cast<const float*>(args.tensor("cq", DType::F32, checked_mul(rows, dim, "tokenNLL")));
    auto ck = static_cast<const float*>(args.tensor("ck", DType::F32, checked_mul(rows, dim, "tokenNLL")));
    auto gen = static_cast<const float*>(args.tensor("genLogit", DType::F32, rows));
    auto inputs = static_cast<const int32_t*>(args.tensor("inputs", DType::I32, rows));
    auto targets = static_cast<const int32_t*>(args.tensor("targets", DType::I32, rows));
    auto nll = static_cast<float*>(args.tensor("nll", DType::F32, rows));
    auto stats = static_cast<float*>(args.tensor("stats", DType::F32, checked_mul(rows, 3, "tokenNLL")));
    K::copy_mix_forward(cq, ck, gen, inputs, targets, nll, stats, batch, len, dim, vocab);
    return info.Env().Undefined();
  });
}

// copyMixBackward(batch, len, dim, cq, ck, genLogit, inputs, targets, stats, dnll, coef, dcq, dck, dgen)
Napi::Value copyMixBackward(const Napi::CallbackInfo& info) {
  return guarded(info, "tokenNLL backward", [&] {
    Args args(info, "tokenNLL backward");
    int64_t batch = args.integer("batch"), len = args.integer("len"), dim = args.integer("dim");
    int64_t rows = checked_mul(batch, len, "tokenNLL backward");
    if (dim == 0 && rows > 0) fail("tokenNLL backward: the copy head needs a model width D > 0");
    int64_t rd = checked_mul(rows, dim, "tokenNLL backward");
    auto cq = static_cast<const float*>(args.tensor("cq", DType::F32, rd));
    auto ck = static_cast<const float*>(args.tensor("ck", DType::F32, rd));
    auto gen = static_cast<const float*>(args.tensor("genLogit", DType::F32, rows));
    auto inputs = static_cast<const int32_t*>(args.tensor("inputs", DType::I32, rows));
    auto targets = static_cast<const int32_t*>(args.tensor("targets", DType::I32, rows));
    auto stats = static_cast<const float*>(args.tensor("stats", DType::F32, checked_mul(rows, 3, "tokenNLL backward")));
    auto dnll = static_cast<const float*>(args.tensor("dnll", DType::F32, rows));
    auto coef = static_cast<float*>(args.tensor("coef", DType::F32, rows));
    auto dcq = static_cast<float*>(args.tensor("dcq", DType::F32, rd));
    auto dck = static_cast<float*>(args.tensor("dck", DType::F32, rd));
    auto dgen = static_cast<float*>(args.tensor("dgen", DType::F32, rows));
    K::copy_mix_backward(cq, ck, gen, inputs, targets, stats, dnll, coef, dcq, dck, dgen, batch, len, dim);
    return info.Env().Undefined();
  });
}

// copyMixProbs(batch, len, dim, vocab, hasCopy, logits, cq, ck, gen, tokens, lengths, probs): the copy-head
// tensors (cq, ck, gen, tokens, lengths) are (null, 0) pairs without a copy head.
Napi::Value copyMixProbs(const Napi::CallbackInfo& info) {
  return guarded(info, "copyMixProbs", [&] {
    Args args(info, "copyMixProbs");
    int64_t batch = args.integer("batch"), len = args.integer("len"), dim = args.integer("dim", 1);
    int64_t vocab = args.integer("vocab", 1);
    bool copy = args.flag("hasCopy");
    auto logits = static_cast<const float*>(args.tensor("logits", DType::F32, checked_mul(batch, vocab, "copyMixProbs")));
    auto cq = static_cast<const float*>(args.optional_tensor("cq", copy, DType::F32, checked_mul(batch, dim, "copyMixProbs")));
    auto ck = static_cast<const float*>(
        args.optional_tensor("ck", copy, DType::F32, checked_mul(checked_mul(batch, len, "copyMixProbs"), dim, "copyMixProbs")));
    auto gen = static_cast<const float*>(args.optional_tensor("gen", copy, DType::F32, batch));
    auto tokens = static_cast<const int32_t*>(args.optional_tensor("tokens", copy, DType::I32, checked_mul(batch, len, "copyMixProbs")));
    auto lengths = static_cast<const int32_t*>(args.optional_tensor("lengths", copy, DType::I32, batch));
    auto probs = static_cast<float*>(args.tensor("probs", DType::F32, checked_mul(batch, vocab, "copyMixProbs")));
    if (batch) K::copy_mix_probs(logits, cq, ck, gen, tokens, lengths, probs, batch, len, dim, vocab);
    return info.Env().Undefined();
  });
}

}  // namespace

void register_classifier(Napi::Env env, Napi::Object exports) {
  exports.Set("copyMixProbs", Napi::Function::New(env, copyMixProbs, "copyMixProbs"));
  exports.Set("tokenNLLForward", Napi::Function::New(env, tokenNLLForward, "tokenNLLForward"));
  exports.Set("tokenNLLBackward", Napi::Function::New(env, tokenNLLBackward, "tokenNLLBackward"));
  exports.Set("copyMixForward", Napi::Function::New(env, copyMixForward, "copyMixForward"));
  exports.Set("copyMixBackward", Napi::Function::New(env, copyMixBackward, "copyMixBackward"));
}

}  // namespace mg::binding
