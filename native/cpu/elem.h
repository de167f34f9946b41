// Element access shared by the CPU kernels: float32 and bfloat16 are both
// computed in float32; dispatch_float picks the storage type at run time.
#pragma once

#include "../common/common.h"

namespace mg::cpu {

inline float load(const float* p) { return *p; }
inline float load(const uint16_t* p) { return bf16_to_f32(*p); }
inline void store(float* p, float v) { *p = v; }
inline void store(uint16_t* p, float v) { *p = f32_to_bf16(v); }

// Calls fn(T{}) with T = float for float32 or uint16_t for bfloat16.
template <typename Fn>
void dispatch_float(DType dt, const char* op, Fn&& fn) {
  if (dt == DType::F32) return fn(float{});
  if (dt == DType::BF16) return fn(uint16_t{});
  fail("%s: dtype %s is not supported (float32 or bfloat16)", op, dtype_name(dt));
}

}  // namespace mg::cpu
