// Which instruction sets the CPU kernels may use, asked of the CPU once. The addon is built for plain x86-64: each
// vector path is compiled with a target attribute and chosen at run time by these. MEMGPT_CPU_ISA=avx2 keeps to
// AVX2 + FMA where the CPU has more, so that the tests can run the AVX2 paths on such a CPU too.
#pragma once

#include <cstdlib>
#include <cstring>

namespace mg::cpu {

// AVX2 and FMA: every vector path of the kernels.
inline bool has_avx2() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
}

// AVX-512 BF16 dot products (Zen 4, Intel Cooper Lake and later): the bfloat16 GEMV of decoding (matmul.cpp).
inline bool has_bf16_dot() {
  static const bool yes = [] {
    const char* isa = std::getenv("MEMGPT_CPU_ISA");
    if (isa && std::strcmp(isa, "avx2") == 0) return false;
    __builtin_cpu_init();
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bf16");
  }();
  return yes;
}

}  // namespace mg::cpu
