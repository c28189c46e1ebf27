// AVX-512 VNNI tile kernels (qdot_avx512_tile.h) for Q4_0 and Q8_0 weights, and the dispatch of
// the integer MatMul tiles (compiled with -mavx512f/bw/dq/vl/vnni; only called when the CPU has
// them).
//   * Q4_0: the nibbles q (0..15) are the unsigned operand; the offset 8 is taken off by starting
//     each token's block sum at -8 * sum(x). Its kernel works on 256-bit vectors (two blocks'
//     low nibbles in one, high nibbles in another, the activations prepared in the same order):
//     on AMD Zen 4 the 512-bit forms of its unpacking and scale conversion cost about twice as
//     much (bench/results/kernels-avx512-ymm-2026-12-07.md). Two block pairs' products are added
//     before the accumulator, so a single row and token does not wait on the FMA latency.
//   * Q8_0: the activations, moved to 0..255 (x + 128), are the unsigned operand; each row's block
//     sum starts at -128 * sum(w); one FMA per block pair into the accumulator.
#include "kernels/qdot_avx512_tile.h"

namespace pipeinfer::kernels::avx512 {
namespace {

// ----- Q4_0 / Q8_0 (blocks of 32, two per 512-bit register) -------------------------------------

// An odd last block (b = nb - 1) of Q8_0, in the low 256 bits of the accumulators.
template <int R, int T>
inline void LastBlockQ8(const Args& g, int bytes, __m512 (&acc)[R][T]) {
  const int64_t b = g.nb - 1;
  const __m256i k80 = _mm256_set1_epi8(static_cast<char>(0x80));
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const uint8_t* blk = g.row[r] + b * bytes;
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
    const __m256i init_r = _mm256_sub_epi32(_mm256_setzero_si256(),
                                            _mm256_dpbusd_epi32(_mm256_setzero_si256(), k80, w));
    const __m512 dw = _mm512_castps256_ps512(_mm256_set1_ps(Half(blk)));
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m256i x = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.x[t] + 32 * b)), k80);
      const __m256i s = _mm256_dpbusd_epi32(init_r, x, w);
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
      // The two scales d[2p], d[2p + 1] (8 bytes, 4-byte aligned: an unaligned 64-bit load).
      const __m128 d2 =
          _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(d + 2 * p)));
      const __m256 dx = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d2), pick);
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
    ZeroTile(acc);
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
    StoreTile(g, acc);
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
    if (g.nb % 2 != 0) LastBlockQ8(g, kBytes, acc);
    StoreTile(g, acc);
  }
};

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
    default:
      KQuantMatMulTile(w, a, y, ys, r0, r1, t0, t1);
      return;
  }
}

}  // namespace pipeinfer::kernels::avx512
