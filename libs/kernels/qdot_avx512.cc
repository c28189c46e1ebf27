// AVX-512 VNNI tile kernels of the integer MatMul path (qdot.h) for Q8_0, Q4_0, Q4_K and Q6_K
// weights (compiled with -mavx512f/bw/dq/vl/vnni; only called when the CPU has them).
//
// A micro-kernel computes R rows x T tokens at once: each weight block is loaded and unpacked
// once for the T tokens, each activation block once for the R rows, and the R x T partial sums
// stay in registers for the whole row. Products of 8-bit values use vpdpbusd (unsigned x signed
// bytes, four products into each 32-bit lane) or, where K-quant sub-block scales apply,
// vpmaddubsw followed by vpdpwssd (16-bit pairs times the scales, added to 32-bit lanes):
//   * Q4_0: the nibbles q (0..15) are the unsigned operand; the offset 8 is taken off by starting
//     each token's block sum at -8 * sum(x). Its kernel works on 256-bit vectors (two blocks'
//     low nibbles in one, high nibbles in another, the activations prepared in the same order):
//     on AMD Zen 4 the 512-bit forms of its unpacking and scale conversion cost twice as much and
//     decoded 1.6x slower (bench/results/kernels-q4_0-ymm-2026-12-07.md).
//   * Q8_0: the activations, moved to 0..255 (x + 128), are the unsigned operand; each row's block
//     sum starts at -128 * sum(w).
//   * Q4_K / Q6_K: nibbles / 6-bit values times the activations (vpmaddubsw), times the sub-block
//     scales (vpdpwssd); Q4_K's mins and Q6_K's offset 32 come from the activations' bsums.
// Integer sums are exact; each block's sum is scaled in float (d_w * d_x, one FMA per block into
// the pair's accumulator; Q4_0 adds two block pairs' products before the accumulator). Every (row,
// token) pair goes through the same operations in the same order whatever R, T, the batch or the
// thread split, so results do not depend on them.
//
// A single token (decode; up to 4 tokens for the K-quants) goes one row at a time, and for Q4_0 /
// Q8_0 the token's share of each block pair's work is prepared once for all rows of the tile.
//
// Nothing here may be shared with code compiled for other CPUs: internal linkage only.
//
// GCC 12's AVX-512 headers read a self-initialized "undefined" vector in their cast helpers
// (GCC bug 105593, fixed in 13), which -Wall reports at every use.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <new>

#include "kernels/decode_avx2.h"
#include "kernels/qdot.h"
#include "kernels/simd.h"

namespace pipeinfer::kernels::avx512 {
namespace {

using gguf::TensorType;
using internal::QuantActs;

inline float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return _cvtsh_ss(h);
}

// [a x 8, b x 8]
inline __m512 TwoScales(float a, float b) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(a)), _mm256_set1_ps(b), 1);
}

inline float Sum512(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// Which tiles get their tokens' operands prepared once per tile (K::Prepare, read through
// Args::aux): none, small batches only (the rest compute them in the kernel), or every tile.
enum class Aux { kNone, kSmallBatches, kAlways };

inline float Sum256(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// Where a micro-kernel reads and writes.
struct Args {
  const uint8_t* row[8];  // R rows
  const int8_t* x[8];     // T tokens' quants
  const float* d[8];      // T tokens' block scales
  const int16_t* bs[8];   // T tokens' bsums (Q8_K)
  // Q4_0/Q8_0 small batches: per token and block pair, the token's part of the pair's products
  // prepared once for all rows (Prepare); null: computed in the kernel.
  const uint8_t* aux[8];
  float* y;  // y[t * ys + r] for the tile's first row and token
  int64_t ys;
  int64_t nb;  // weight blocks per row
};

// A tile's R x T accumulators: cleared before, and each summed into y[t * ys + r] after.
template <int R, int T>
inline void ZeroTile(__m512 (&acc)[R][T]) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  }
}

template <int R, int T>
inline void StoreTile(const Args& g, const __m512 (&acc)[R][T]) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) g.y[t * g.ys + r] = Sum512(acc[r][t]);
  }
}

// As StoreTile, for 8-lane accumulators.
template <int R, int T>
inline void StoreTile8(const Args& g, const __m256 (&acc)[R][T]) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) g.y[t * g.ys + r] = Sum256(acc[r][t]);
  }
}

// ----- Q4_0 / Q8_0 (blocks of 32, two per 512-bit register) -------------------------------------

// An odd last block (b = nb - 1) of Q4_0 (kQ4) or Q8_0, in the low 256 bits of the accumulators.
template <bool kQ4, int R, int T>
inline void LastBlock(const Args& g, int bytes, __m512 (&acc)[R][T]) {
  const int64_t b = g.nb - 1;
  const __m256i k8y = _mm256_set1_epi8(kQ4 ? 8 : static_cast<char>(0x80));
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const uint8_t* blk = g.row[r] + b * bytes;
    __m256i w;
    if (kQ4) {
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
      const __m128i m = _mm_set1_epi8(0x0f);
      w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m));
    } else {
      w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
    }
    const __m256i init_r = _mm256_sub_epi32(_mm256_setzero_si256(),
                                            _mm256_dpbusd_epi32(_mm256_setzero_si256(), k8y, w));
    const __m512 dw = _mm512_castps256_ps512(_mm256_set1_ps(Half(blk)));
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.x[t] + 32 * b));
      __m256i s;
      if (kQ4) {
        const __m256i init_t = _mm256_sub_epi32(
            _mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), k8y, x));
        s = _mm256_dpbusd_epi32(init_t, w, x);
      } else {
        x = _mm256_xor_si256(x, k8y);
        s = _mm256_dpbusd_epi32(init_r, x, w);
      }
      const __m512 d = _mm512_maskz_mul_ps(0x00ff, dw, _mm512_set1_ps(g.d[t][b]));
      acc[r][t] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(_mm512_zextsi256_si512(s)), acc[r][t]);
    }
  }
}

// Q4_0 by block pairs. The 32 bytes of nibbles of blocks b, b + 1 are loaded side by side and
// unpacked (low nibbles into the low 256 bits, high into the high) to
//   [b lo (values 0-15), b+1 lo (0-15), b hi (16-31), b+1 hi (16-31)];
// a token's 64 activations of the pair are permuted to the same order with one 128-bit-lane
// shuffle, and the scales come as [d_b x 4, d_b+1 x 4, d_b x 4, d_b+1 x 4] to match the 32-bit
// lanes of vpdpbusd.
struct KQ4_0 {
  static constexpr int kR = 3, kT = 4;
  static constexpr int64_t kSmallBatch = 1;
  static constexpr Aux kAux = Aux::kAlways;
  static constexpr int kBytes = 18;

  // Weights of block pair p of a row: the nibbles [b lo, b+1 lo] and [b hi, b+1 hi] (16 values
  // of each block each) and the scales [d_b x 4, d_b+1 x 4].
  struct W {
    __m256i lo, hi;
    __m256 d;
  };
  static inline W Load(const uint8_t* b0) {
    const __m256i v = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 2))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + kBytes + 2)), 1);
    const __m256i m = _mm256_set1_epi8(0x0f);
    const __m256i pick = _mm256_setr_epi16(0, 0, 0, 0, 9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0);
    return {_mm256_and_si256(v, m), _mm256_and_si256(_mm256_srli_epi16(v, 4), m),
            _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permutexvar_epi16(
                pick, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0)))))};
  }
  // A token's operands for block pair p (kAuxBytes): its activations [x_b 0-15, x_b+1 0-15] and
  // [x_b 16-31, x_b+1 16-31], the sums' start (-8 times the sum of each lane's eight activations:
  // the weights are q - 8) and the scales [d_b x 4, d_b+1 x 4].
  static constexpr int64_t kAuxBytes = 128;
  static void Prepare(const int8_t* xq, const float* d, int64_t np, uint8_t* out) {
    const __m256i pick = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    const __m256i k8 = _mm256_set1_epi8(8);
    for (int64_t p = 0; p < np; ++p) {
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64 * p));
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64 * p + 32));
      const __m256i lo = _mm256_permute2x128_si256(a, b, 0x20);
      const __m256i hi = _mm256_permute2x128_si256(a, b, 0x31);
      const __m256i sum =
          _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), k8, lo), k8, hi);
      const __m256 dx = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd(
                                                     reinterpret_cast<const double*>(d + 2 * p)))),
                                                 pick);
      uint8_t* o = out + kAuxBytes * p;
      _mm256_store_si256(reinterpret_cast<__m256i*>(o), lo);
      _mm256_store_si256(reinterpret_cast<__m256i*>(o + 32), hi);
      _mm256_store_si256(reinterpret_cast<__m256i*>(o + 64),
                         _mm256_sub_epi32(_mm256_setzero_si256(), sum));
      _mm256_store_ps(reinterpret_cast<float*>(o + 96), dx);
    }
  }
  // One block pair for one row (w) and one token (its operands at o): the integer sums as floats,
  // and their scales d_w * d_x.
  static inline __m256 Sums(const W& w, const uint8_t* o) {
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(
        _mm256_dpbusd_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(o + 64)), w.lo,
                            _mm256_load_si256(reinterpret_cast<const __m256i*>(o))),
        w.hi, _mm256_load_si256(reinterpret_cast<const __m256i*>(o + 32))));
  }
  static inline __m256 Scales(const W& w, const uint8_t* o) {
    return _mm256_mul_ps(w.d, _mm256_load_ps(reinterpret_cast<const float*>(o + 96)));
  }

  // Per (row, token), 8 lanes: for q = 0, 1, ...: acc += fma(d1, s1, d0 * s0) with (s0, d0) and
  // (s1, d1) the sums and scales of pairs 2q and 2q + 1 (so the only dependency from step to step
  // is one addition); then acc = fma(d, s, acc) for an odd last pair, and an odd last block as
  // below; y = the sum of the 8 lanes.
  template <int R, int T>
  static void Run(const Args& g) {
    __m256 acc[R][T];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    }
    const int64_t np = g.nb / 2;
    int64_t p = 0;
    for (; p + 2 <= np; p += 2) {
      W w0[R], w1[R];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        w0[r] = Load(g.row[r] + 2 * p * kBytes);
        w1[r] = Load(g.row[r] + 2 * (p + 1) * kBytes);
      }
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const uint8_t* o = g.aux[t] + kAuxBytes * p;
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const __m256 f0 = _mm256_mul_ps(Scales(w0[r], o), Sums(w0[r], o));
          const __m256 f =
              _mm256_fmadd_ps(Scales(w1[r], o + kAuxBytes), Sums(w1[r], o + kAuxBytes), f0);
          acc[r][t] = _mm256_add_ps(acc[r][t], f);
        }
      }
    }
    if (p < np) {
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const W w = Load(g.row[r] + 2 * p * kBytes);
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
          const uint8_t* o = g.aux[t] + kAuxBytes * p;
          acc[r][t] = _mm256_fmadd_ps(Scales(w, o), Sums(w, o), acc[r][t]);
        }
      }
    }
    if (g.nb % 2 != 0) {  // lanes 0-3: values 0-15 (low nibbles), lanes 4-7: 16-31
      const int64_t b = g.nb - 1;
      const __m256i k8 = _mm256_set1_epi8(8);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const uint8_t* blk = g.row[r] + b * kBytes;
        const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
        const __m128i m = _mm_set1_epi8(0x0f);
        const __m256i w =
            _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m));
        const __m256 dw = _mm256_set1_ps(Half(blk));
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.x[t] + 32 * b));
          const __m256i init = _mm256_sub_epi32(_mm256_setzero_si256(),
                                                _mm256_dpbusd_epi32(_mm256_setzero_si256(), k8, x));
          const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(g.d[t][b]));
          acc[r][t] = _mm256_add_ps(
              acc[r][t], _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(init, w, x))));
        }
      }
    }
    StoreTile8(g, acc);
  }
};

// Q8_0 by block pairs: block b in the low 256 bits, b + 1 in the high; the activations, moved to
// 0..255 (x + 128), are the unsigned operand, and each row's block sum starts at -128 * sum(w).
struct KQ8_0 {
  static constexpr int kR = 4, kT = 4;
  static constexpr int64_t kSmallBatch = 1;  // 2-4 tokens: 4-row tiles measured faster
  static constexpr Aux kAux = Aux::kSmallBatches;
  static constexpr int kBytes = 34;

  // [d_b x 8, d_b+1 x 8] from the 64 bytes at block b (block b + 1's scale is word 17).
  static inline __m512 Scales(const uint8_t* b0) {
    const __m512i pick = _mm512_setr_epi32(0, 0, 0, 0, 0x00110011, 0x00110011, 0x00110011,
                                           0x00110011, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_cvtph_ps(
        _mm512_castsi512_si256(_mm512_permutexvar_epi16(pick, _mm512_loadu_si512(b0))));
  }
  static inline __m512i Pair(const uint8_t* b0) {
    return _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 2))),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + kBytes + 2)), 1);
  }
  // A token's operands for block pair p: x + 128 as unsigned bytes, and [d_x of block 2p x 8,
  // d_x of block 2p + 1 x 8].
  static inline void TokenPair(const int8_t* xq, const float* d, int64_t p, __m512i* a,
                               __m512* dx) {
    *a = _mm512_xor_si512(_mm512_loadu_si512(xq + 64 * p),
                          _mm512_set1_epi8(static_cast<char>(0x80)));
    *dx = TwoScales(d[2 * p], d[2 * p + 1]);
  }
  static constexpr int64_t kAuxBytes = 128;  // per token and block pair
  static void Prepare(const int8_t* xq, const float* d, int64_t np, uint8_t* out) {
    for (int64_t p = 0; p < np; ++p) {
      __m512i a;
      __m512 dx;
      TokenPair(xq, d, p, &a, &dx);
      _mm512_store_si512(out + kAuxBytes * p, a);
      _mm512_store_ps(out + kAuxBytes * p + 64, dx);
    }
  }

  template <int R, int T>
  static void Run(const Args& g) {
    __m512 acc[R][T];
    ZeroTile(acc);
    const __m512i k80 = _mm512_set1_epi8(static_cast<char>(0x80));
    const int64_t np = g.nb / 2;
    for (int64_t p = 0; p < np; ++p) {
      __m512i w[R], init_r[R];
      __m512 dw[R];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const uint8_t* b0 = g.row[r] + 2 * p * kBytes;
        w[r] = Pair(b0);
        dw[r] = Scales(b0);
        // sum (x + 128) w - 128 sum w.
        init_r[r] = _mm512_sub_epi32(_mm512_setzero_si512(),
                                     _mm512_dpbusd_epi32(_mm512_setzero_si512(), k80, w[r]));
      }
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        __m512i a;
        __m512 dx;
        if (g.aux[t] != nullptr) {
          a = _mm512_load_si512(g.aux[t] + kAuxBytes * p);
          dx = _mm512_load_ps(g.aux[t] + kAuxBytes * p + 64);
        } else {
          TokenPair(g.x[t], g.d[t], p, &a, &dx);
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const __m512i s = _mm512_dpbusd_epi32(init_r[r], a, w[r]);
          acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(dw[r], dx), _mm512_cvtepi32_ps(s), acc[r][t]);
        }
      }
    }
    if (g.nb % 2 != 0) LastBlock<false, R, T>(g, kBytes, acc);
    StoreTile(g, acc);
  }
};

// ----- Q4_K ------------------------------------------------------------------------------------

// 256-bit vectors, like Q4_0 (measured faster on Zen 4 than the 512-bit forms). Per 64 weights c
// (sub-blocks 2c: low nibbles of 32 bytes, 2c + 1: high nibbles): the nibbles times the
// activations (vpmaddubsw), times the sub-block scale (vpdpwssd), into one int32 sum per block.
struct KQ4_K {
  static constexpr int kR = 2, kT = 4;
  static constexpr int64_t kSmallBatch = 4;
  static constexpr Aux kAux = Aux::kNone;
  static constexpr int kBytes = 144;

  // pshufb mask repeating 16-bit lane j (of each 128-bit half) in all 8 lanes.
  static inline __m256i Lane16(int j) {
    return _mm256_set1_epi16(static_cast<short>(0x0100 + 0x0202 * j));
  }

  template <int R, int T>
  static void Run(const Args& g) {
    __m256 acc[R][T];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    }
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    for (int64_t b = 0; b < g.nb; ++b) {
      __m256i scales[R];  // the 8 sub-block scales as 16-bit lanes, in both 128-bit halves
      __m256i mins[R];    // each min twice, 16-bit lanes
      __m256 dw[R], dmw[R];
      __m256i isum[R][T];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const uint8_t* blk = g.row[r] + b * kBytes;
        uint64_t sc, mn;
        avx2::ScalesMinsK4(blk + 4, &sc, &mn);
        scales[r] = _mm256_broadcastsi128_si256(
            _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<long long>(sc))));
        const __m128i m8 = _mm_cvtsi64_si128(static_cast<long long>(mn));
        mins[r] = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
        dw[r] = _mm256_set1_ps(Half(blk));
        dmw[r] = _mm256_set1_ps(Half(blk + 2));
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) isum[r][t] = _mm256_setzero_si256();
      }
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        __m256i lo[R], hi[R], s0[R], s1[R];
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const __m256i v = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(g.row[r] + b * kBytes + 16 + 32 * c));
          lo[r] = _mm256_and_si256(v, low4);
          hi[r] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
          s0[r] = _mm256_shuffle_epi8(scales[r], Lane16(2 * c));
          s1[r] = _mm256_shuffle_epi8(scales[r], Lane16(2 * c + 1));
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
          const int8_t* x = g.x[t] + 256 * b + 64 * c;
          const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
          const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32));
#pragma GCC unroll 4
          for (int r = 0; r < R; ++r) {
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo[r], x0), s0[r]);
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi[r], x1), s1[r]);
            isum[r][t] = _mm256_add_epi32(isum[r][t], _mm256_add_epi32(p0, p1));
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
    StoreTile8(g, acc);
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

// ----- tiles -----------------------------------------------------------------------------------

template <class K, int R>
void RunRows(const Args& g, int nt) {
  switch (nt) {
    case 1:
      return K::template Run<R, 1>(g);
    case 2:
      return K::template Run<R, 2>(g);
    case 3:
      return K::template Run<R, 3>(g);
    default:
      return K::template Run<R, 4>(g);
  }
}

template <class K>
void RunTile(const Args& g, int nr, int nt) {
  static_assert(K::kT == 4 && K::kR >= 2 && K::kR <= 4);
  if constexpr (K::kR >= 4) {
    if (nr == 4) return RunRows<K, 4>(g, nt);
  }
  if constexpr (K::kR >= 3) {
    if (nr == 3) return RunRows<K, 3>(g, nt);
  }
  if (nr == 2) return RunRows<K, 2>(g, nt);
  RunRows<K, 1>(g, nt);
}

// Batches of up to K::kSmallBatch tokens (decode; speculative runs for the K-quants) stream the
// weights from memory: they go one row at a time (several rows read side by side defeat the
// hardware prefetchers: measured slower). Larger batches use tiles of K::kR rows.

// Per-thread scratch for Prepare (64-byte aligned; freed when the thread ends).
struct Scratch {
  uint8_t* p = nullptr;
  size_t n = 0;
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { Free(); }
  void Free() {
    if (p != nullptr) ::operator delete[](p, std::align_val_t(64));
    p = nullptr;
    n = 0;
  }
  uint8_t* Get(size_t need) {
    if (need > n) {
      Free();
      p = static_cast<uint8_t*>(::operator new[](need, std::align_val_t(64)));
      n = need;
    }
    return p;
  }
};
thread_local Scratch scratch;

template <class K>
void Tile(const Matrix& w, const QuantActs& a, int ab, float* y, int64_t ys, int64_t r0, int64_t r1,
          int64_t t0, int64_t t1) {
  const int64_t nb = w.cols / ab;
  Args g;
  g.ys = ys;
  g.nb = nb;
  for (const uint8_t*& p : g.aux) p = nullptr;
  const bool small = t1 - t0 <= K::kSmallBatch;
  const int64_t kr = small ? 1 : K::kR;
  // Small batches go row by row: the tokens' share of the work is done once for all rows.
  uint8_t* aux = nullptr;
  int64_t aux_token_bytes = 0;
  if constexpr (K::kAux != Aux::kNone) {
    const bool want = K::kAux == Aux::kAlways || (small && r1 - r0 > 1);
    if (want && nb >= 2) {
      aux_token_bytes = nb / 2 * K::kAuxBytes;
      aux = scratch.Get(static_cast<size_t>((t1 - t0) * aux_token_bytes));
      for (int64_t t = t0; t < t1; ++t) {
        K::Prepare(a.qs + t * a.cols, a.d + t * nb, nb / 2, aux + (t - t0) * aux_token_bytes);
      }
    }
  }
  for (int64_t r = r0; r < r1; r += kr) {
    const int nr = static_cast<int>(r1 - r < kr ? r1 - r : kr);
    for (int i = 0; i < nr; ++i) g.row[i] = w.data + (r + i) * w.row_bytes;
    for (int64_t t = t0; t < t1; t += K::kT) {
      const int nt = static_cast<int>(t1 - t < K::kT ? t1 - t : K::kT);
      for (int i = 0; i < nt; ++i) {
        g.x[i] = a.qs + (t + i) * a.cols;
        g.d[i] = a.d + (t + i) * nb;
        g.bs[i] = a.bsums == nullptr ? nullptr : a.bsums + (t + i) * nb * 16;
        if (aux != nullptr) g.aux[i] = aux + (t + i - t0) * aux_token_bytes;
      }
      g.y = y + t * ys + r;
      RunTile<K>(g, nr, nt);
    }
  }
}

}  // namespace

bool HasQuantKernel(TensorType type) {
  switch (type) {
    case TensorType::kQ4_0:
    case TensorType::kQ8_0:
    case TensorType::kQ4_K:
    case TensorType::kQ6_K:
      return true;
    default:
      return false;
  }
}

void QuantMatMulTile(const Matrix& w, const QuantActs& a, float* y, int64_t ys, int64_t r0,
                     int64_t r1, int64_t t0, int64_t t1) {
  switch (w.type) {
    case TensorType::kQ4_0:
      return Tile<KQ4_0>(w, a, 32, y, ys, r0, r1, t0, t1);
    case TensorType::kQ8_0:
      return Tile<KQ8_0>(w, a, 32, y, ys, r0, r1, t0, t1);
    case TensorType::kQ4_K:
      return Tile<KQ4_K>(w, a, 256, y, ys, r0, r1, t0, t1);
    case TensorType::kQ6_K:
      return Tile<KQ6_K>(w, a, 256, y, ys, r0, r1, t0, t1);
    default:
      return;
  }
}

}  // namespace pipeinfer::kernels::avx512
