// Internal, for the .cu files only: helpers that compile for the device and for the host, so that
// the element-level code of the kernels (weight decoding, KV addressing, RoPE) can also run on the
// host, where tests check it against the CPU code on machines without a GPU.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "cuda/cuda_kv_geometry.h"

#define PI_HD __host__ __device__ __forceinline__
#if defined(__CUDA_ARCH__)
#define PI_UNROLL _Pragma("unroll")
#else
#define PI_UNROLL  // (host compilers do not know the CUDA pragma)
#endif

namespace pipeinfer::cuda::internal {

// Memory access: plain (vector) loads and stores on the device, memcpy on the host (where reading
// a byte buffer through another type would break aliasing rules).
template <typename T>
PI_HD T LoadAs(const void* p) {
#if defined(__CUDA_ARCH__)
  return *static_cast<const T*>(p);
#else
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
#endif
}
template <typename T>
PI_HD void StoreAs(void* p, T v) {
#if defined(__CUDA_ARCH__)
  *static_cast<T*>(p) = v;
#else
  std::memcpy(p, &v, sizeof(T));
#endif
}

// Products and sums that are never fused into an FMA (whose single rounding would differ from the
// CPU code): the *_rn intrinsics on the device; on the host the compiler does not contract them.
PI_HD float MulRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
PI_HD float AddRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
PI_HD float SubRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

PI_HD float HalfBitsToFloat(uint32_t bits) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits & 0xffffu)));
}
PI_HD uint16_t FloatToHalfBits(float f) { return __half_as_ushort(__float2half_rn(f)); }
PI_HD float Bf16BitsToFloat(uint32_t bits) {
  const uint32_t u = (bits & 0xffffu) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// Byte offset of the K row of physical slot `slot` in layer `layer` (the V row follows
// block_tokens rows later; see KvGeometry).
PI_HD int64_t KeyRowOffset(const KvGeometry& g, int layer, int64_t slot) {
  return (slot / g.block_tokens) * g.block_bytes + layer * g.layer_bytes +
         (slot % g.block_tokens) * g.row_bytes;
}

}  // namespace pipeinfer::cuda::internal
