// AVX-512 VNNI tile kernel (qdot_avx512_tile.h) for Q6_K weights with Q8_K activations (compiled
// with -mavx512f/bw/dq/vl/vnni; only called when the CPU has them): 6-bit values times the
// activations (vpmaddubsw), times the sub-block scales; the offset 32 comes from the activations'
// bsums. (Q4_0, Q8_0, Q4_K: qdot_groups_avx512.h.)
#include "kernels/qdot_avx512_tile.h"

namespace pipeinfer::kernels::avx512 {
namespace {

// ----- Q6_K ------------------------------------------------------------------------------------

struct KQ6_K {
  static constexpr int kR = 2, kT = 4;
  static constexpr int64_t kSmallBatch = 4;
  static constexpr int kBytes = 210;

  template <int R, int T>
  static void Run(const Args& g) {
    __m512 acc[R][T];
    ZeroTile(acc);
    const __m512i low4 = _mm512_set1_epi8(0x0f), bits45 = _mm512_set1_epi8(0x30);
    const __m512i qh_shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    for (int64_t b = 0; b < g.nb; ++b) {
      __m512i sc16[R];  // the 16 scales as 16-bit lanes (low 256 bits)
      __m512i isum[R][T];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const uint8_t* blk = g.row[r] + b * kBytes;
        sc16[r] = _mm512_zextsi256_si512(
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192))));
      }
      // The weights are q - 32: start each sum at -32 * sum_s sc_s * bsum_s.
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const __m512i bs = _mm512_zextsi256_si512(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.bs[t] + 16 * b)));
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          isum[r][t] = _mm512_sub_epi32(_mm512_setzero_si512(),
                                        _mm512_slli_epi32(_mm512_madd_epi16(bs, sc16[r]), 5));
        }
      }
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        __m512i lq[R], hq[R];
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const uint8_t* blk = g.row[r] + b * kBytes;
          lq[r] = _mm512_loadu_si512(blk + 64 * h);  // ql of groups (0, 1) of this half
          const __m256i qh =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h));
          hq[r] = _mm512_srlv_epi16(_mm512_broadcast_i64x4(qh), qh_shift);  // [qh, qh >> 2]
        }
#pragma GCC unroll 2
        for (int j = 0; j < 2; ++j) {
          // Groups (2j, 2j + 1) of the half: activations 128h + 64j .., scales 8h + 4j .. + 3.
          const int s0 = 8 * h + 4 * j;
          const __m512i sel = _mm512_inserti64x4(
              _mm512_castsi256_si512(_mm256_set_m128i(_mm_set1_epi16(static_cast<short>(s0 + 1)),
                                                      _mm_set1_epi16(static_cast<short>(s0)))),
              _mm256_set_m128i(_mm_set1_epi16(static_cast<short>(s0 + 3)),
                               _mm_set1_epi16(static_cast<short>(s0 + 2))),
              1);
          __m512i q[R], sv[R];
#pragma GCC unroll 4
          for (int r = 0; r < R; ++r) {
            // q = low nibble | (2 high bits << 4): the high bits sit at bits 0-1 (j = 0) or 4-5
            // (j = 1) of hq; one ternary-logic op (0xF8: a | (b & c)) keeps bits 4-5 of them.
            const __m512i lo = j == 0 ? _mm512_and_si512(lq[r], low4)
                                      : _mm512_and_si512(_mm512_srli_epi16(lq[r], 4), low4);
            const __m512i hi = j == 0 ? _mm512_slli_epi16(hq[r], 4) : hq[r];
            q[r] = _mm512_ternarylogic_epi32(lo, hi, bits45, 0xF8);
            sv[r] = _mm512_permutexvar_epi16(sel, sc16[r]);
          }
#pragma GCC unroll 4
          for (int t = 0; t < T; ++t) {
            const __m512i x = _mm512_loadu_si512(g.x[t] + 256 * b + 128 * h + 64 * j);
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
              isum[r][t] = _mm512_dpwssd_epi32(isum[r][t], _mm512_maddubs_epi16(q[r], x), sv[r]);
            }
          }
        }
      }
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const __m512 dx = _mm512_set1_ps(g.d[t][b]);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const __m512 dw = _mm512_set1_ps(Half(g.row[r] + b * kBytes + 208));
          acc[r][t] =
              _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(isum[r][t]), acc[r][t]);
        }
      }
    }
    StoreTile(g, acc);
  }
};

}  // namespace

bool KQuantMatMulTile(const Matrix& w, const QuantActs& a, float* y, int64_t ys, int64_t r0,
                      int64_t r1, int64_t t0, int64_t t1) {
  switch (w.type) {
    case TensorType::kQ6_K:
      Tile<KQ6_K>(w, a, 256, y, ys, r0, r1, t0, t1);
      return true;
    default:
      return false;
  }
}

}  // namespace pipeinfer::kernels::avx512
