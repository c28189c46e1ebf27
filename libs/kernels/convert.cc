// Half / bfloat16 conversions: exact bit manipulation (half.h), F16C for the array forms.
#include "kernels/half.h"
#include "kernels/kernels.h"
#include "kernels/simd.h"

namespace pipeinfer::kernels {

float HalfToFloat(uint16_t h) { return internal::HalfBitsToFloat(h); }

uint16_t FloatToHalf(float f) { return internal::FloatToHalfBits(f); }

float BF16ToFloat(uint16_t h) { return internal::Bf16BitsToFloat(h); }

void HalfToFloatN(const uint16_t* in, float* out, int64_t n) {
#if PIPEINFER_KERNELS_X86
  if (UsingSimd()) return avx2::HalfToFloatN(in, out, n);
#endif
  for (int64_t i = 0; i < n; ++i) out[i] = internal::HalfBitsToFloat(in[i]);
}

void FloatToHalfN(const float* in, uint16_t* out, int64_t n) {
#if PIPEINFER_KERNELS_X86
  if (UsingSimd()) return avx2::FloatToHalfN(in, out, n);
#endif
  for (int64_t i = 0; i < n; ++i) out[i] = internal::FloatToHalfBits(in[i]);
}

}  // namespace pipeinfer::kernels
