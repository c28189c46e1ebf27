// AVX2 activation quantizers of the integer MatMul path (compiled with -mavx2 -mfma -mf16c). They
// compute what the portable ones in qdot.cc compute, bit for bit, for every input (NaN and
// infinity included): the same IEEE operation on each value (|x|, x * scale, the rounding by
// adding 1.5 * 2^23), maxima that do not depend on the order, the first value of the largest
// magnitude where the sign matters, and the low byte of each rounded value, as the portable cast
// keeps it.
#include <immintrin.h>

#include <cstdint>

#include "kernels/simd.h"

namespace pipeinfer::kernels::avx2 {
namespace {

inline __m256 Abs(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

// max(m, |v|) per lane; a NaN v leaves m (vmaxps returns its second operand when one is NaN).
inline __m256 MaxAbs(__m256 m, __m256 v) { return _mm256_max_ps(Abs(v), m); }

// The largest lane of m (no lane is NaN).
inline float MaxLanes(__m256 m) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

// nearbyint(v) for |v| < 2^22 (see RoundNearest in qdot.cc), any bits otherwise, as qdot.cc's.
inline __m256i RoundNearest(__m256 v) {
  const __m256i bits = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12582912.0f)));
  return _mm256_sub_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)),
                          _mm256_set1_epi32(0x00400000));
}

// The low bytes of 32 int32 values (a: values 0-7, b: 8-15, c: 16-23, d: 24-31), in order.
inline void StoreLowBytes(__m256i a, __m256i b, __m256i c, __m256i d, int8_t* out) {
  const __m256i m = _mm256_set1_epi32(0xff);
  const __m256i ab = _mm256_packus_epi32(_mm256_and_si256(a, m), _mm256_and_si256(b, m));
  const __m256i cd = _mm256_packus_epi32(_mm256_and_si256(c, m), _mm256_and_si256(d, m));
  // dwords: a0-3 b0-3 c0-3 d0-3 a4-7 b4-7 c4-7 d4-7
  const __m256i bytes = _mm256_packus_epi16(ab, cd);
  _mm256_storeu_si256(
      reinterpret_cast<__m256i*>(out),
      _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

// 32 values times `scale`, rounded, clamped to at most `top` (INT32_MAX: not clamped), low bytes.
inline void Round32(const float* x, __m256 scale, __m256i top, int8_t* qs) {
  __m256i v[4];
  for (int k = 0; k < 4; ++k) {
    v[k] = _mm256_min_epi32(RoundNearest(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), scale)), top);
  }
  StoreLowBytes(v[0], v[1], v[2], v[3], qs);
}

}  // namespace

float Quantize32(const float* x, int8_t* qs) {
  __m256 m = _mm256_setzero_ps();
  for (int k = 0; k < 4; ++k) m = MaxAbs(m, _mm256_loadu_ps(x + 8 * k));
  const float amax = MaxLanes(m);
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  Round32(x, _mm256_set1_ps(id), _mm256_set1_epi32(INT32_MAX), qs);
  return amax;
}

bool QuantizeQ8_KBlock(const float* x, float top, int8_t* qs, float* iscale) {
  __m256 m = _mm256_setzero_ps();
  for (int k = 0; k < 32; ++k) m = MaxAbs(m, _mm256_loadu_ps(x + 8 * k));
  const float amax = MaxLanes(m);
  if (amax == 0.0f) return false;
  // The first value whose magnitude is amax (the portable loop keeps the first).
  float max = 0.0f;
  const __m256 am = _mm256_set1_ps(amax);
  for (int k = 0; k < 32; ++k) {
    const int hit =
        _mm256_movemask_ps(_mm256_cmp_ps(Abs(_mm256_loadu_ps(x + 8 * k)), am, _CMP_EQ_OQ));
    if (hit != 0) {
      max = x[8 * k + __builtin_ctz(static_cast<unsigned>(hit))];
      break;
    }
  }
  *iscale = top / max;
  const __m256 s = _mm256_set1_ps(*iscale);
  for (int k = 0; k < 8; ++k) Round32(x + 32 * k, s, _mm256_set1_epi32(127), qs + 32 * k);
  return true;
}

}  // namespace pipeinfer::kernels::avx2
