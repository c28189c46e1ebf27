// AVX-512 VNNI kernels for Q4_K and Q6_K weights (Q8_K activations) in groups of 8 rows
// (qdot_groups_avx512.h).
#include <cmath>

#include "kernels/qdot_groups_avx512.h"

namespace pipeinfer::kernels::avx512 {
namespace {

// ----- Q4_K ------------------------------------------------------------------------------------
// Block (1152 bytes): the 8 rows' blocks transposed by 32-bit words (word w of row i at 32 w + 4
// i): words 0-3 are d | dmin << 16 and the 12 scale bytes, words 4-35 the quants (run c = words 4 +
// 8c .. 11 + 8c: sub-block 2c in the low nibbles, 2c + 1 in the high ones). Per token:
//   sumi = sum_j sc_j * (the integer product of sub-block j)        (exact, int32)
//   summ = sum_j m_j * (the sum of the token's quants over sub-block j)
//   acc = fma(d * d_x, float(sumi), acc); acc = fnmadd(dmin * d_x, float(summ), acc).
struct Q4_K {
  static constexpr int kBlock = 256, kBlockBytes = kQ4_KGroupBlockBytes, kT = 4;

  // Quad q (words 4q .. 4q + 3) of block b.
  static inline void Quad(const InGroup& in, int64_t b, int q, __m256i (&w)[4]) {
    in.Quad(b, 128 * q, w);
  }
  static inline void Quad(const InRows& in, int64_t b, int q, __m256i (&w)[4]) {
    in.Words(b, 16 * q, w);
  }
  static void Pack(const InRows& in, int64_t nb, uint8_t* out) {
    for (int64_t b = 0; b < nb; ++b, out += kBlockBytes) {
      for (int q = 0; q < 9; ++q) {
        __m256i w[4];
        Quad(in, b, q, w);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 128 * q + 32 * j), w[j]);
        }
      }
    }
  }

  // The 6-bit scale (sc) and min (m) of sub-block j of the 8 rows (ScaleMinK4 lane by lane), from
  // scale words A (bytes 0-3), B (4-7) and C (8-11).
  static inline __m256i Scale(__m256i a, __m256i c, int j) {
    const __m256i k63 = _mm256_set1_epi32(63), k15 = _mm256_set1_epi32(15);
    if (j < 4) return _mm256_and_si256(_mm256_srli_epi32(a, 8 * j), k63);
    const int i = j - 4;
    return _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi32(c, 8 * i), k15),
        _mm256_slli_epi32(
            _mm256_srli_epi32(
                _mm256_and_si256(a, _mm256_set1_epi32(static_cast<int>(0xc0u << (8 * i)))),
                8 * i + 6),
            4));
  }
  static inline __m256i Min(__m256i b, __m256i c, int j) {
    const __m256i k63 = _mm256_set1_epi32(63), k15 = _mm256_set1_epi32(15);
    if (j < 4) return _mm256_and_si256(_mm256_srli_epi32(b, 8 * j), k63);
    const int i = j - 4;
    return _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi32(c, 8 * i + 4), k15),
        _mm256_slli_epi32(
            _mm256_srli_epi32(
                _mm256_and_si256(b, _mm256_set1_epi32(static_cast<int>(0xc0u << (8 * i)))),
                8 * i + 6),
            4));
  }

  template <int T, class In>
  static void Run(const In& in, int64_t nb, const Token* tk, __m256 (&acc)[T]) {
    for (int64_t b = 0; b < nb; ++b) {
      __m256i hq[4];
      Quad(in, b, 0, hq);
      const __m256i head = hq[0], sa = hq[1], sb = hq[2], sc = hq[3];
      __m256i sumi[T];
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        __m256i lo_sum[T], hi_sum[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) lo_sum[t] = hi_sum[t] = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {  // chunks 4h .. 4h + 3 of run c
          __m256i v[4], lo[4], hi[4];
          Quad(in, b, 1 + 2 * c + h, v);
          Nibbles(v, lo, hi);
#pragma GCC unroll 8
          for (int t = 0; t < T; ++t) {
            const int8_t* x = tk[t].x + 256 * b + 64 * c + 16 * h;
#pragma GCC unroll 4
            for (int k = 0; k < 4; ++k) {
              lo_sum[t] = _mm256_dpbusd_epi32(lo_sum[t], lo[k], Broadcast4(x + 4 * k));
              hi_sum[t] = _mm256_dpbusd_epi32(hi_sum[t], hi[k], Broadcast4(x + 32 + 4 * k));
            }
          }
        }
        const __m256i sc_lo = Scale(sa, sc, 2 * c), sc_hi = Scale(sa, sc, 2 * c + 1);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          sumi[t] =
              _mm256_add_epi32(sumi[t], _mm256_add_epi32(_mm256_mullo_epi32(sc_lo, lo_sum[t]),
                                                         _mm256_mullo_epi32(sc_hi, hi_sum[t])));
        }
      }
      // Mins as int16 pairs (m_2k | m_2k+1 << 16) against the token's bsum pairs (vpmaddwd).
      __m256i mins[4];
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        mins[k] =
            _mm256_or_si256(Min(sb, sc, 2 * k), _mm256_slli_epi32(Min(sb, sc, 2 * k + 1), 16));
      }
      const __m256 dw = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(head));
      const __m256 dmin = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32(head, 16)));
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const int32_t* pairs = tk[t].extra + 4 * b;
        __m256i summ = _mm256_madd_epi16(mins[0], _mm256_set1_epi32(pairs[0]));
#pragma GCC unroll 3
        for (int k = 1; k < 4; ++k) {
          summ = _mm256_add_epi32(summ, _mm256_madd_epi16(mins[k], _mm256_set1_epi32(pairs[k])));
        }
        const __m256 dx = _mm256_set1_ps(tk[t].d[b]);
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, dx), _mm256_cvtepi32_ps(summ), acc[t]);
      }
    }
  }
};

// ----- Q6_K ------------------------------------------------------------------------------------
// Block (1680 bytes, interleave.h): the 8 rows' f16 d; the 16 sub-block scales, scale s of row i
// at byte 16 + 8s + i; then, in the order the kernel reads them, 16 triples of 96 bytes: triple
// 8n + m (half n of the row's block, m < 8) holds ql word 16n + m (the low nibbles of weights
// 128n + 4m .. + 3 and, in the high nibbles, of 128n + 64 + 4m ..), ql word 16n + 8 + m (weights
// 128n + 32 + 4m .. and 128n + 96 + 4m ..) and qh word 8n + m (the 2 high bits of the four: bits
// 0-1, 2-3, 4-5, 6-7 of each byte), row i's word at 4i. Each 6-bit weight q is assembled in a byte
// (low nibble | high bits << 4) with one ternary-logic op and multiplied by the token's quants
// with vpdpbusd. Per token and sub-block s (16 weights of one row) the integer sum starts at
// -32 * bsum_s (the weights are q - 32: QuantActs::q6_k_offsets); then
//   sumi = sum_s sc_s * (that sum)                                   (exact, int32)
//   acc = fma(d * d_x, float(sumi), acc).
struct Q6_K {
  static constexpr int kBlock = 256, kBlockBytes = kQ6_KGroupBlockBytes, kT = 4;
  static constexpr int kScales = 16, kTriples = 144;

  // Block b of 8 file-layout rows in the group layout at `out`.
  static void PackBlock(const InRows& in, int64_t b, uint8_t* out) {
    __m256i w[4];
    in.Words(b, 194, w);  // bytes 194 .. 209: d is the high half of word 3
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                     _mm256_cvtepi32_epi16(_mm256_srli_epi32(w[3], 16)));
    in.Words(b, 192, w);  // the scales: byte j of word k, lane i = scale 4k + j of row i
    const __m256i by_byte = _mm256_broadcastsi128_si256(
        _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
    const __m256i halves = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const __m256i s = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(w[k], by_byte), halves);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + kScales + 32 * k), s);
    }
    for (int q = 0; q < 12; ++q) {  // file words 4q .. 4q + 3 (ql: q < 8; qh after)
      in.Words(b, 16 * q, w);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + internal::Q6_KGroupWordAt(4 * q + j)),
                            w[j]);
      }
    }
  }
  static void Pack(const InRows& in, int64_t nb, uint8_t* out) {
    for (int64_t b = 0; b < nb; ++b, out += kBlockBytes) PackBlock(in, b, out);
  }

  // One group block at `p` for T tokens.
  template <int T>
  static inline void Block(const uint8_t* p, int64_t b, const Token* tk, __m256 (&acc)[T]) {
    const __m256i low4 = _mm256_set1_epi8(0x0f), bits45 = _mm256_set1_epi8(0x30);
    __m256i sumi[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
#pragma GCC unroll 2
    for (int n = 0; n < 2; ++n) {
#pragma GCC unroll 2
      for (int e = 0; e < 2; ++e) {  // m = 4e .. 4e + 3: sub-blocks 8n + e + {0, 2, 4, 6}
        __m256i sum[4][T];
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const int32_t* init = tk[t].extra + 16 * b + 8 * n + e;
#pragma GCC unroll 4
          for (int j = 0; j < 4; ++j) sum[j][t] = _mm256_set1_epi32(init[2 * j]);
        }
#pragma GCC unroll 4
        for (int m = 4 * e; m < 4 * e + 4; ++m) {
          const uint8_t* tri = p + kTriples + 96 * (8 * n + m);
          const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tri));
          const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tri + 32));
          const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tri + 64));
          // Weights 4m + 32j .. + 3 of the half (j < 4): low nibble | high bits at 4-5
          // (0xF8: a | (b & c)).
          const __m256i q[4] = {
              _mm256_ternarylogic_epi32(_mm256_and_si256(ql0, low4), _mm256_slli_epi32(qh, 4),
                                        bits45, 0xF8),
              _mm256_ternarylogic_epi32(_mm256_and_si256(ql1, low4), _mm256_slli_epi32(qh, 2),
                                        bits45, 0xF8),
              _mm256_ternarylogic_epi32(_mm256_and_si256(_mm256_srli_epi32(ql0, 4), low4), qh,
                                        bits45, 0xF8),
              _mm256_ternarylogic_epi32(_mm256_and_si256(_mm256_srli_epi32(ql1, 4), low4),
                                        _mm256_srli_epi32(qh, 2), bits45, 0xF8)};
#pragma GCC unroll 8
          for (int t = 0; t < T; ++t) {
            const int8_t* x = tk[t].x + 256 * b + 128 * n + 4 * m;
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) {
              sum[j][t] = _mm256_dpbusd_epi32(sum[j][t], q[j], Broadcast4(x + 32 * j));
            }
          }
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const __m256i sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(
              reinterpret_cast<const __m128i*>(p + kScales + 8 * (8 * n + e + 2 * j))));
#pragma GCC unroll 8
          for (int t = 0; t < T; ++t) {
            sumi[t] = _mm256_add_epi32(sumi[t], _mm256_mullo_epi32(sc, sum[j][t]));
          }
        }
      }
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m256 dx = _mm256_set1_ps(tk[t].d[b]);
      acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
  }

  template <int T>
  static void Run(const InGroup& in, int64_t nb, const Token* tk, __m256 (&acc)[T]) {
    for (int64_t b = 0; b < nb; ++b) Block<T>(in.g + b * kBlockBytes, b, tk, acc);
  }
  // File-layout rows (the file mapping, --weight-memory mmap): one row at a time, since 8 rows
  // read side by side stream badly (packed into a group per block, decode ran at a third of the
  // speed). Per block the row's exact integer sum is formed in 16 lanes, with the scales applied
  // in 16-bit pairs (vpmaddubsw, then vpdpwssd), and reduced to one integer: the same integer as
  // in Block, then the same float operation, so the same bits.
  template <int T>
  static void Run(const InRows& in, int64_t nb, const Token* tk, __m256 (&acc)[T]) {
    alignas(32) float out[T][kGroupRows];
    for (int i = 0; i < kGroupRows; ++i) {
      float a[T];
      Row<T>(in.rows[i], in.block_bytes, nb, tk, a);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) out[t][i] = a[t];
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[t] = _mm256_load_ps(out[t]);
  }

  template <int T>
  static void Row(const uint8_t* row, int block_bytes, int64_t nb, const Token* tk,
                  float (&acc)[T]) {
    const __m512i low4 = _mm512_set1_epi8(0x0f), bits45 = _mm512_set1_epi8(0x30);
    // Shifts the second 256 bits by 2: [qh, qh >> 2].
    const __m512i qh_shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[t] = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * block_bytes;
      const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192));
      const __m512i sc16 = _mm512_zextsi256_si512(_mm256_cvtepi8_epi16(sc8));
      const __m512i sc32 = _mm512_cvtepi8_epi32(sc8);
      __m512i isum[T];
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {  // sum_s sc_s * (-32 bsum_s)
        isum[t] = _mm512_mullo_epi32(sc32, _mm512_loadu_si512(tk[t].extra + 16 * b));
      }
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m512i lq = _mm512_loadu_si512(blk + 64 * h);
        const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h));
        const __m512i hq = _mm512_srlv_epi16(_mm512_broadcast_i64x4(qh), qh_shift);
#pragma GCC unroll 2
        for (int j = 0; j < 2; ++j) {
          // Weights 128h + 64j .. + 63 (sub-blocks 8h + 4j .. + 3): low nibble | the 2 high bits
          // (bits 0-1 of hq for j = 0, 4-5 for j = 1) at 4-5; their scales lane by lane.
          const __m512i lo = j == 0 ? _mm512_and_si512(lq, low4)
                                    : _mm512_and_si512(_mm512_srli_epi16(lq, 4), low4);
          const __m512i q =
              _mm512_ternarylogic_epi32(lo, j == 0 ? _mm512_slli_epi16(hq, 4) : hq, bits45, 0xF8);
          const int s0 = 8 * h + 4 * j;
          const __m512i sel = _mm512_inserti64x4(
              _mm512_castsi256_si512(_mm256_set_m128i(_mm_set1_epi16(static_cast<short>(s0 + 1)),
                                                      _mm_set1_epi16(static_cast<short>(s0)))),
              _mm256_set_m128i(_mm_set1_epi16(static_cast<short>(s0 + 3)),
                               _mm_set1_epi16(static_cast<short>(s0 + 2))),
              1);
          const __m512i sv = _mm512_permutexvar_epi16(sel, sc16);
#pragma GCC unroll 8
          for (int t = 0; t < T; ++t) {
            const __m512i x = _mm512_loadu_si512(tk[t].x + 256 * b + 128 * h + 64 * j);
            isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(q, x), sv);
          }
        }
      }
      uint16_t d;
      std::memcpy(&d, blk + 208, sizeof(d));
      const float dw = _cvtsh_ss(d);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const float sumi = static_cast<float>(_mm512_reduce_add_epi32(isum[t]));
        acc[t] = std::fma(dw * tk[t].d[b], sumi, acc[t]);
      }
    }
  }
};

}  // namespace

void GroupedKQuantTile(const Matrix& w, const QuantActs& a, float* y, int64_t ys, int64_t r0,
                       int64_t r1, int64_t t0, int64_t t1) {
  if (w.type == TensorType::kQ4_K) {
    Tile<Q4_K>(w, a, a.q4_k_bsum_pairs, 4, y, ys, r0, r1, t0, t1);
  } else if (w.type == TensorType::kQ6_K) {
    Tile<Q6_K>(w, a, a.q6_k_offsets, 16, y, ys, r0, r1, t0, t1);
  } else {
    std::abort();
  }
}

}  // namespace pipeinfer::kernels::avx512
