// AVX-512 VNNI kernels for Q8_0 weights, and the dispatch of the integer MatMul tiles
// (compiled with -mavx512f/bw/dq/vl/vnni; only called when the CPU has them).
//   * Q4_0 and Q4_K: groups of 8 rows (qdot_groups_avx512.cc).
//   * Q8_0 (tiles of qdot_avx512_tile.h): the activations, moved to 0..255 (x + 128), are the
//     unsigned operand; each row's block sum starts at -128 * sum(w); one FMA per block pair into
//     the accumulator.
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
    case TensorType::kQ4_K:
      GroupedMatMulTile(w, a, y, ys, r0, r1, t0, t1);
      return;
    case TensorType::kQ8_0:
      return Tile<KQ8_0>(w, a, 32, y, ys, r0, r1, t0, t1);
    default:
      KQuantMatMulTile(w, a, y, ys, r0, r1, t0, t1);
      return;
  }
}

}  // namespace pipeinfer::kernels::avx512
