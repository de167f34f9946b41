// The sm_80 PTX primitives the CUDA kernels use (mma.sync m16n8k16 bf16, ldmatrix and ldmatrix.trans, cp.async
// with its commit and wait, the 16-byte shared-memory store, generic-to-shared addresses): the one home of this
// inline PTX. Each primitive has two implementations: the PTX one, and, in the emulated addon (MG_CUDA_EMU), the
// emulator's version of the PTX ISA's definition (native/emu), which the same kernels then run on the CPU.
#pragma once

#include <cstdint>

#include "../runtime.h"

namespace mg::cuda::ptx {

#if defined(MG_CUDA_EMU)

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return ::mg_emu::shared_address(p); }
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  ::mg_emu::cp_async16(dst, src, pred ? 16 : 0);
}
__device__ __forceinline__ void cp_async_commit() { ::mg_emu::cp_async_commit(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  ::mg_emu::cp_async_wait(N);
}
__device__ __forceinline__ void st_shared16(uint32_t dst, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  ::mg_emu::st_shared_v4(dst, a, b, c, d);
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) { ::mg_emu::ldmatrix_x4(r, addr, false); }
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) { ::mg_emu::ldmatrix_x4(r, addr, true); }
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  ::mg_emu::mma_m16n8k16_bf16(c, a, b0, b1);
}

#else

// Shared window address of a generic pointer into shared memory.
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

// 16 bytes global → shared, asynchronous; src_bytes 0 fills the 16 bytes with zeros and reads nothing.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(pred ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void st_shared16(uint32_t dst, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a·b for one m16n8k16 tile: a is 16x16 (4 regs of bf16 pairs), b 16x8 (2 regs), c 16x8 fp32.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}


#endif  // MG_CUDA_EMU

}  // namespace mg::cuda::ptx
