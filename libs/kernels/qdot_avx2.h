// Internal, AVX2 translation units of the integer MatMul path only (qdot*_avx2.cc, compiled with
// -mavx2 -mfma -mf16c): the row driver shared by their kernels and small helpers.
//
// A kernel K is a struct with kBytes (bytes per weight block) and
//   template <int NT> static void Row(const uint8_t* row, int64_t nb, const Tokens<NT>&, float*
//   out)
// which writes the dot products of one weight row (nb blocks) with NT tokens to out[0..NT-1].
// Rows<K, block> runs it over rows [r0, r1) and the tokens in groups of up to kMaxNt. A kernel
// must compute each token with the same operations in the same order whatever NT, so results do
// not depend on the batch size or the thread split. Internal linkage only (see decode_avx2.h).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "kernels/decode_avx2.h"
#include "kernels/qdot.h"

namespace pipeinfer::kernels::avx2 {
namespace {

constexpr int kMaxNt = 4;

inline __m256i LoadX(const int8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// Sum of signed-byte products as eight int32 lanes: sw holds the weights' signs (any int8),
// aw = |sw|. x must not hold -128 (negating it overflows): for Q8_0/Q8_1 activations only, never
// Q8_K (whose quants reach -128).
inline __m256i DotSigned(__m256i aw, __m256i sw, __m256i x) {
  const __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, sw));
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

// Shuffle masks. ByteShuffle(a, b): bytes 0-7 take byte a, bytes 8-15 byte b. ScaleShuffle(a, b)
// (per 128-bit half, for a vector of 16-bit lanes): the low half repeats lane a, the high half b.
inline __m128i ByteShuffle(int a, int b) {
  return _mm_set_epi64x(static_cast<long long>(0x0101010101010101ull * static_cast<unsigned>(b)),
                        static_cast<long long>(0x0101010101010101ull * static_cast<unsigned>(a)));
}
inline __m256i ScaleShuffle(int a, int b) {
  const long long la = static_cast<long long>(0x0100010001000100ull + 0x0202020202020202ull * a);
  const long long lb = static_cast<long long>(0x0100010001000100ull + 0x0202020202020202ull * b);
  return _mm256_set_epi64x(lb, lb, la, la);
}

// Pointers of the NT tokens of a group.
template <int NT>
struct Tokens {
  const int8_t* x[NT];
  const float* d[NT];
  const int16_t* bsums[NT];
  const int8_t* xp[NT];  // Q4_0: QuantActs::qs_pairs
  const float* dp[NT];   // Q4_0: QuantActs::d_pairs
  const float* s[NT];    // Q8_1: QuantActs::s
};

// -(sum over the 16 sub-blocks of bsum_s * sc_s) << shift as eight int32 lanes: the start of a
// block's integer sum when its weights are applied as unsigned values q + (1 << shift) (Q3_K: 4,
// Q6_K: 32) and the offset times each sub-block's activation sum must be taken off.
inline __m256i MinusScaledBsums(const int16_t* bsums, __m256i sc16, int shift) {
  const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bsums));
  return _mm256_sub_epi32(_mm256_setzero_si256(),
                          _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), shift));
}

// acc[t] += (dw * d_x[t][b]) * isum[t]: a K-quant block's integer sums scaled into each token's
// accumulator.
template <int NT>
inline void AddScaledSums(float dw, const Tokens<NT>& tk, int64_t b, const __m256i* isum,
                          __m256* acc) {
  const __m256 dwv = _mm256_set1_ps(dw);
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    const __m256 d = _mm256_mul_ps(dwv, _mm256_broadcast_ss(tk.d[t] + b));
    acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum[t]), acc[t]);
  }
}

// A 32-weight type whose weights are signed bytes times one f16 d (first field), with Q8_0
// activations (never -128): W::kBytes and W::Weights(blk), the block's weights in order. Blocks
// go in pairs into two accumulators per token, to hide the FMA latency.
template <class W>
struct KSigned32 {
  static constexpr int kBytes = W::kBytes;
  template <int NT>
  static inline void Block(const uint8_t* blk, int64_t b, const Tokens<NT>& tk, __m256* acc) {
    const __m256 dw = _mm256_set1_ps(HalfAt(blk));
    const __m256i sw = W::Weights(blk);
    const __m256i aw = _mm256_sign_epi8(sw, sw);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m256i s = DotSigned(aw, sw, LoadX(tk.x[t] + 32 * b));
      const __m256 d = _mm256_mul_ps(dw, _mm256_broadcast_ss(tk.d[t] + b));
      acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[t]);
    }
  }
  template <int NT>
  static inline void Row(const uint8_t* row, int64_t nb, const Tokens<NT>& tk, float* out) {
    __m256 acc0[NT], acc1[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      Block<NT>(row + b * kBytes, b, tk, acc0);
      Block<NT>(row + (b + 1) * kBytes, b + 1, tk, acc1);
    }
    if (b < nb) Block<NT>(row + b * kBytes, b, tk, acc0);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) out[t] = HorizontalSum(_mm256_add_ps(acc0[t], acc1[t]));
  }
};

template <class K, int NT>
void RowGroup(const uint8_t* row, int64_t nb, const internal::QuantActs& a, int64_t ab, int64_t t0,
              float* out) {
  Tokens<NT> tk;
  const int64_t nbx = a.cols / ab;
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    tk.x[t] = a.qs + (t0 + t) * a.cols;
    tk.d[t] = a.d + (t0 + t) * nbx;
    tk.bsums[t] = a.bsums == nullptr ? nullptr : a.bsums + (t0 + t) * nbx * 16;
    tk.xp[t] = a.qs_pairs == nullptr ? nullptr : a.qs_pairs + (t0 + t) * a.cols;
    tk.dp[t] = a.d_pairs == nullptr ? nullptr : a.d_pairs + (t0 + t) * (a.cols / 64 * 8);
    tk.s[t] = a.s == nullptr ? nullptr : a.s + (t0 + t) * nbx;
  }
  K::template Row<NT>(row, nb, tk, out);
}

template <class K, int kAb>
void Rows(const Matrix& w, const internal::QuantActs& a, int64_t n_tokens, float* y, int64_t ys,
          int64_t r0, int64_t r1) {
  using GroupFn =
      void (*)(const uint8_t*, int64_t, const internal::QuantActs&, int64_t, int64_t, float*);
  constexpr GroupFn kGroup[kMaxNt + 1] = {nullptr, RowGroup<K, 1>, RowGroup<K, 2>, RowGroup<K, 3>,
                                          RowGroup<K, 4>};
  const int64_t nb = w.cols / kAb;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kMaxNt) {
      const int64_t nt = n_tokens - t0 < kMaxNt ? n_tokens - t0 : kMaxNt;
      float out[kMaxNt];
      kGroup[nt](row, nb, a, kAb, t0, out);
      for (int64_t t = 0; t < nt; ++t) y[(t0 + t) * ys + r] = out[t];
    }
  }
}

}  // namespace
}  // namespace pipeinfer::kernels::avx2
