// AVX2+FMA+F16C vector operations and conversions (compiled with -mavx2 -mfma -mf16c). As in
// matmul_avx2.cc, no std:: templates or shared inline functions are used here.
#include <immintrin.h>
#include <math.h>

#include <cstdint>

#include "kernels/simd.h"

namespace pipeinfer::kernels::avx2 {
namespace {

inline float HorizontalSum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

inline float HorizontalMax(__m256 v) {
  const __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s2, _mm_movehdup_ps(s2)));
}

inline __m256 LoadHalf8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// exp(x) to about 1 ulp (Cephes' expf: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r,
// then scaling by 2^n done in two steps so that n up to 128 stays representable). Below
// ln(2^-126) the result is 0, above ln(FLT_MAX) it is +inf.
inline __m256 Exp(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654475f), hi = _mm256_set1_ps(88.72283935f);
  const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  y = _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  return y;
}

// a * b + c rounded once, like a lane of _mm256_fmadd_ps: element-wise kernels must give an
// element the same bits in the vector body and in the scalar tail, or element j of a buffer
// would depend on the buffer's length (e.g. on how many tokens a batch has).
inline float Fma1(float a, float b, float c) {
  return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}

// exp of one value through the vector code, so that tails match the vector body bit for bit.
inline float Exp1(float v) {
  float out[8];
  _mm256_storeu_ps(out, Exp(_mm256_set1_ps(v)));
  return out[0];
}

}  // namespace

void HalfToFloatN(const uint16_t* in, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, LoadHalf8(in + i));
  for (; i < n; ++i) out[i] = _cvtsh_ss(in[i]);
}

void FloatToHalfN(const float* in, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
  }
  for (; i < n; ++i) out[i] = _cvtss_sh(in[i], _MM_FROUND_TO_NEAREST_INT);
}

namespace {

inline float DotF32Body(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
  }
  for (; i + 8 <= n; i += 8) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  }
  float sum = HorizontalSum(_mm256_add_ps(_mm256_add_ps(acc0, acc2), _mm256_add_ps(acc1, acc3)));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

inline void AxpyF32Body(float s, const float* x, float* y, int64_t n) {
  const __m256 sv = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(sv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] = Fma1(s, x[i], y[i]);
}

}  // namespace

float DotF32(const float* a, const float* b, int64_t n) { return DotF32Body(a, b, n); }

void DotF32Rows(const float* a, int64_t a_stride, int64_t rows, const float* b, int64_t n,
                float* out) {
  for (int64_t r = 0; r < rows; ++r) out[r] = DotF32Body(a + r * a_stride, b, n);
}

float DotF32F16(const float* a, const uint16_t* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), LoadHalf8(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), LoadHalf8(b + i + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), LoadHalf8(b + i + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), LoadHalf8(b + i + 24), acc3);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), LoadHalf8(b + i), acc0);
  float sum = HorizontalSum(_mm256_add_ps(_mm256_add_ps(acc0, acc2), _mm256_add_ps(acc1, acc3)));
  for (; i < n; ++i) sum += a[i] * _cvtsh_ss(b[i]);
  return sum;
}

void AxpyF32(float s, const float* x, float* y, int64_t n) { AxpyF32Body(s, x, y, n); }

void AxpyF32Rows(const float* s, const float* x, float* y, int64_t y_stride, int64_t rows,
                 int64_t n) {
  for (int64_t r = 0; r < rows; ++r) AxpyF32Body(s[r], x, y + r * y_stride, n);
}

void AxpyF16(float s, const uint16_t* x, float* y, int64_t n) {
  const __m256 sv = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(sv, LoadHalf8(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] = Fma1(s, _cvtsh_ss(x[i]), y[i]);
}

namespace {

// Row j of an attention call as floats (converted into `row` when F16), with the next row
// prefetched: the rows of a paged cache are not contiguous.
inline const float* CacheRow(const uint8_t* base, const size_t* offsets, int64_t j, int64_t n_keys,
                             bool f16, int64_t n, float* row) {
  if (j + 1 < n_keys) {
    _mm_prefetch(reinterpret_cast<const char*>(base + offsets[j + 1]), _MM_HINT_T0);
  }
  if (!f16) return reinterpret_cast<const float*>(base + offsets[j]);
  const uint16_t* h = reinterpret_cast<const uint16_t*>(base + offsets[j]);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(row + i, LoadHalf8(h + i));
  for (; i < n; ++i) row[i] = _cvtsh_ss(h[i]);
  return row;
}

}  // namespace

void AttentionScores(const float* a, int64_t a_stride, int64_t rows, const uint8_t* base,
                     const size_t* offsets, int64_t n_keys, bool f16, int64_t n, float scale,
                     float* row, float* out, int64_t out_stride) {
  for (int64_t j = 0; j < n_keys; ++j) {
    const float* k = CacheRow(base, offsets, j, n_keys, f16, n, row);
    for (int64_t r = 0; r < rows; ++r) {
      out[r * out_stride + j] = scale * DotF32Body(a + r * a_stride, k, n);
    }
  }
}

void AttentionValues(const float* w, int64_t w_stride, int64_t rows, const uint8_t* base,
                     const size_t* offsets, int64_t n_keys, bool f16, int64_t n, float* row,
                     float* y, int64_t y_stride) {
  for (int64_t j = 0; j < n_keys; ++j) {
    const float* v = CacheRow(base, offsets, j, n_keys, f16, n, row);
    for (int64_t r = 0; r < rows; ++r) AxpyF32Body(w[r * w_stride + j], v, y + r * y_stride, n);
  }
}

void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* out) {
  // Float squares summed in double, as the portable version (and llama.cpp) does.
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 sq = _mm256_mul_ps(v, v);
    acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
    acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
  }
  double lanes[4];
  _mm256_storeu_pd(lanes, _mm256_add_pd(acc0, acc1));
  double sum = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
  for (; i < n; ++i) sum += static_cast<double>(x[i] * x[i]);
  const float mean = n > 0 ? static_cast<float>(sum / static_cast<double>(n)) : 0.0f;
  const float scale = 1.0f / __builtin_sqrtf(mean + eps);
  const __m256 sv = _mm256_set1_ps(scale);
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), sv);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(v, _mm256_loadu_ps(w + i)));
  }
  for (; i < n; ++i) out[i] = (x[i] * scale) * w[i];
}

void SwiGlu(const float* gate, const float* up, float* out, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = Exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + Exp1(-g)) * up[i];
  }
}

float SoftmaxInPlace(float* x, int64_t n) {
  const float neg_inf = -__builtin_inff();
  __m256 mv = _mm256_set1_ps(neg_inf);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
  float max = HorizontalMax(mv);
  for (; i < n; ++i) max = x[i] > max ? x[i] : max;
  if (max == neg_inf) {  // empty, or everything masked
    for (i = 0; i < n; ++i) x[i] = 0.0f;
    return max;
  }
  const __m256 maxv = _mm256_set1_ps(max);
  __m256 sv = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 e = Exp(_mm256_sub_ps(_mm256_loadu_ps(x + i), maxv));
    _mm256_storeu_ps(x + i, e);
    sv = _mm256_add_ps(sv, e);
  }
  double sum = HorizontalSum(sv);
  for (; i < n; ++i) {
    x[i] = Exp1(x[i] - max);
    sum += x[i];
  }
  const __m256 inv = _mm256_set1_ps(static_cast<float>(1.0 / sum));
  for (i = 0; i + 8 <= n; i += 8)
    _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
  const float inv1 = static_cast<float>(1.0 / sum);
  for (; i < n; ++i) x[i] *= inv1;
  return max + static_cast<float>(log(sum));
}

}  // namespace pipeinfer::kernels::avx2
