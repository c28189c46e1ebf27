// AVX-512 VNNI tile kernels (qdot_avx512_tile.h) for Q4_K and Q6_K weights with Q8_K activations
// (compiled with -mavx512f/bw/dq/vl/vnni; only called when the CPU has them): nibbles / 6-bit
// values times the activations (vpmaddubsw), times the sub-block scales; Q4_K's mins and Q6_K's
// offset 32 come from the activations' bsums.
#include "kernels/qdot_avx512_tile.h"

namespace pipeinfer::kernels::avx512 {
namespace {

// ----- Q4_K ------------------------------------------------------------------------------------

// 256-bit vectors, like Q4_0 (measured faster on Zen 4 than the 512-bit forms). Per 64 weights c
// (sub-blocks 2c: low nibbles of 32 bytes, 2c + 1: high nibbles): the nibbles times the
// activations (vpmaddubsw), times the sub-block scales and added to the block's int32 sums. A
// single row and token uses vpmaddwd and additions (a chain of one addition per 64 weights;
// vpdpwssd's chain of two multiply-adds made it wait on their latency: 15% slower), larger tiles
// vpdpwssd (fewer instructions; 15% faster at 16 tokens). Both add the same products into the same
// int32 lanes, exactly, so the results are bit-identical.
struct KQ4_K {
  static constexpr int kR = 2, kT = 4;
  static constexpr int64_t kSmallBatch = 4;
  static constexpr Aux kAux = Aux::kNone;
  static constexpr int kBytes = 144;

  // pshufb mask repeating 16-bit lane j (of each 128-bit half) in all 8 lanes.
  static inline __m256i Lane16(int j) {
    return _mm256_set1_epi16(static_cast<short>(0x0100 + 0x0202 * j));
  }

  // Large batches prepare each row once per tile (PrepareRow): per block, the 8 sub-block
  // scales each repeated in the 16-bit lanes of a vector (what Lane16 picks), the mins vector and
  // the two block scales as floats. The kernel then loads what it would otherwise compute for
  // every group of 4 tokens; the values, and so the results, are the same.
  static constexpr int64_t kRowPrepBytes =
      576;  // 8 x 32 scales, 32 mins, d, dmin, pad, 256 nibbles

  static void PrepareRow(const uint8_t* row, int64_t nb, uint8_t* out) {
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * kBytes;
      uint8_t* o = out + b * kRowPrepBytes;
      __m256i scales, mins;
      Unpack(blk, &scales, &mins);
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(o + 32 * j),
                           _mm256_shuffle_epi8(scales, Lane16(j)));
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(o + 256), mins);
      const float dd[2] = {Half(blk), Half(blk + 2)};
      std::memcpy(o + 288, dd, sizeof(dd));
      const __m256i low4 = _mm256_set1_epi8(0x0f);
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + 32 * c));
        _mm256_store_si256(reinterpret_cast<__m256i*>(o + 320 + 64 * c), _mm256_and_si256(v, low4));
        _mm256_store_si256(reinterpret_cast<__m256i*>(o + 352 + 64 * c),
                           _mm256_and_si256(_mm256_srli_epi16(v, 4), low4));
      }
    }
  }

  template <int R, int T>
  static void Run(const Args& g) {
    Body<R, T, false>(g);
  }
  template <int R, int T>
  static void RunPrepared(const Args& g) {
    Body<R, T, true>(g);
  }

 private:
  // The block's 8 sub-block scales as 16-bit lanes in both 128-bit halves, and each min twice.
  static inline void Unpack(const uint8_t* blk, __m256i* scales, __m256i* mins) {
    uint64_t sc, mn;
    avx2::ScalesMinsK4(blk + 4, &sc, &mn);
    *scales = _mm256_broadcastsi128_si256(
        _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<long long>(sc))));
    const __m128i m8 = _mm_cvtsi64_si128(static_cast<long long>(mn));
    *mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
  }

  template <int R, int T, bool kPrep>
  static void Body(const Args& g) {
    __m256 acc[R][T];
    ZeroTile(acc);
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    for (int64_t b = 0; b < g.nb; ++b) {
      __m256i scales[R];  // the 8 sub-block scales as 16-bit lanes, in both 128-bit halves
      __m256i mins[R];    // each min twice, 16-bit lanes
      __m256 dw[R], dmw[R];
      __m256i isum[R][T];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        if constexpr (kPrep) {
          const uint8_t* o = g.prep[r] + b * kRowPrepBytes;
          mins[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(o + 256));
          dw[r] = _mm256_broadcast_ss(reinterpret_cast<const float*>(o + 288));
          dmw[r] = _mm256_broadcast_ss(reinterpret_cast<const float*>(o + 292));
        } else {
          const uint8_t* blk = g.row[r] + b * kBytes;
          Unpack(blk, &scales[r], &mins[r]);
          dw[r] = _mm256_set1_ps(Half(blk));
          dmw[r] = _mm256_set1_ps(Half(blk + 2));
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) isum[r][t] = _mm256_setzero_si256();
      }
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        __m256i lo[R], hi[R], s0[R], s1[R];
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          if constexpr (kPrep) {
            const uint8_t* o = g.prep[r] + b * kRowPrepBytes + 64 * c;
            s0[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(o));
            s1[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(o + 32));
            lo[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(o + 320));
            hi[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(o + 352));
          } else {
            const __m256i v = _mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(g.row[r] + b * kBytes + 16 + 32 * c));
            lo[r] = _mm256_and_si256(v, low4);
            hi[r] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
            s0[r] = _mm256_shuffle_epi8(scales[r], Lane16(2 * c));
            s1[r] = _mm256_shuffle_epi8(scales[r], Lane16(2 * c + 1));
          }
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
          const int8_t* x = g.x[t] + 256 * b + 64 * c;
          const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
          const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32));
#pragma GCC unroll 4
          for (int r = 0; r < R; ++r) {
            const __m256i p0 = _mm256_maddubs_epi16(lo[r], x0);
            const __m256i p1 = _mm256_maddubs_epi16(hi[r], x1);
            if constexpr (R * T == 1) {
              isum[r][t] = _mm256_add_epi32(
                  isum[r][t],
                  _mm256_add_epi32(_mm256_madd_epi16(p0, s0[r]), _mm256_madd_epi16(p1, s1[r])));
            } else {
              isum[r][t] =
                  _mm256_dpwssd_epi32(_mm256_dpwssd_epi32(isum[r][t], p0, s0[r]), p1, s1[r]);
            }
          }
        }
      }
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.bs[t] + 16 * b));
        const __m256 dx = _mm256_set1_ps(g.d[t][b]);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const __m256 summ = _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mins[r]));
          acc[r][t] =
              _mm256_fmadd_ps(_mm256_mul_ps(dw[r], dx), _mm256_cvtepi32_ps(isum[r][t]), acc[r][t]);
          acc[r][t] = _mm256_fnmadd_ps(_mm256_mul_ps(dmw[r], dx), summ, acc[r][t]);
        }
      }
    }
    StoreTile(g, acc);
  }
};

// ----- Q6_K ------------------------------------------------------------------------------------

struct KQ6_K {
  static constexpr int kR = 2, kT = 4;
  static constexpr int64_t kSmallBatch = 4;
  static constexpr Aux kAux = Aux::kNone;
  static constexpr int kBytes = 210;

  template <int R, int T>
  static void Run(const Args& g) {
    __m512 acc[R][T];
    ZeroTile(acc);
    const __m512i low4 = _mm512_set1_epi8(0x0f), three = _mm512_set1_epi8(3);
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
            const __m512i lo = j == 0 ? _mm512_and_si512(lq[r], low4)
                                      : _mm512_and_si512(_mm512_srli_epi16(lq[r], 4), low4);
            const __m512i hi = j == 0 ? _mm512_and_si512(hq[r], three)
                                      : _mm512_and_si512(_mm512_srli_epi16(hq[r], 4), three);
            q[r] = _mm512_or_si512(lo, _mm512_slli_epi16(hi, 4));
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
    case TensorType::kQ4_K:
      Tile<KQ4_K>(w, a, 256, y, ys, r0, r1, t0, t1);
      return true;
    case TensorType::kQ6_K:
      Tile<KQ6_K>(w, a, 256, y, ys, r0, r1, t0, t1);
      return true;
    default:
      return false;
  }
}

}  // namespace pipeinfer::kernels::avx512
