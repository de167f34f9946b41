// Shared C++ for both addons: dtypes, bfloat16 conversion and the error type
// that every kernel throws (the bindings turn it into a JS exception).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

namespace mg {

// Element types. The numeric values are part of the JS<->native contract (lib/core/dtype.ts).
enum class DType : int { F32 = 0, BF16 = 1, I32 = 2 };

constexpr int kMaxRank = 8;  // dims of a tensor passed to a strided kernel

enum class BinaryOp : int { Add = 0, Sub = 1, Mul = 2, Div = 3 };

inline size_t dtype_size(DType t) { return t == DType::BF16 ? 2 : 4; }
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::I32: return "int32";
  }
  return "?";
}

// Thrown for bad arguments and backend failures; never abort the process.
struct Error : std::runtime_error {
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

template <typename... Args>
[[noreturn]] inline void fail(const char* fmt, Args... args) {
  char buf[512];
  if constexpr (sizeof...(Args) == 0) {
    std::snprintf(buf, sizeof buf, "%s", fmt);
  } else {
    std::snprintf(buf, sizeof buf, fmt, args...);
  }
  throw Error(buf);
}

#define MG_CHECK(cond, ...)            \
  do {                                 \
    if (!(cond)) ::mg::fail(__VA_ARGS__); \
  } while (0)

// bfloat16 stored as its upper 16 bits; conversion rounds to nearest even and keeps NaN a NaN.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

}  // namespace mg
