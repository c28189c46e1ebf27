// AVX-512 VNNI kernels for Q4_0, Q8_0 and Q4_K weights in groups of 8 rows (interleave.h), compiled
// with -mavx512f/bw/dq/vl/vnni and only called when the CPU has them.
//
// One row per 32-bit lane of 256-bit vectors. On AMD Zen 4 the 512-bit forms of the unpacking
// cost about twice as much (bench/results/kernels-avx512-ymm-2026-12-07.md). Per group and block:
//   * the 8 rows' scales are converted in one vector;
//   * the nibbles are unpacked once for all the tile's tokens;
//   * a token's activations are broadcast 4 bytes at a time, so vpdpbusd (nibbles unsigned,
//     activations signed) leaves row i's integer sums in lane i.
// Nothing is summed across lanes. Every (row, token) goes through the same operations in the
// same order whatever the tile, the batch, the thread split or the weights' layout: rows in the
// file layout are packed into a group first.
//
// Everything here has internal linkage, except GroupedMatMulTile.
#include "kernels/interleave.h"
#include "kernels/qdot_avx512_tile.h"

namespace pipeinfer::kernels::avx512 {
namespace {

inline __m256i Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return _mm256_set1_epi32(v);
}

// 16 bytes at `offset` of 8 file-layout rows as 4 vectors: word j (bytes 4j..4j+3) of the 8
// rows, row i in lane i. Rows k and k + 4 (k < 4) are loaded into one vector each, then a 4 x 4
// transpose of 32-bit words in each 128-bit lane.
inline void Transpose16(const uint8_t* const rows[kGroupRows], int64_t offset, __m256i (&w)[4]) {
  __m256i v[4];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    v[k] = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(rows[k + 4] + offset),
                               reinterpret_cast<const __m128i*>(rows[k] + offset));
  }
  const __m256i a0 = _mm256_unpacklo_epi32(v[0], v[1]), a1 = _mm256_unpackhi_epi32(v[0], v[1]);
  const __m256i a2 = _mm256_unpacklo_epi32(v[2], v[3]), a3 = _mm256_unpackhi_epi32(v[2], v[3]);
  w[0] = _mm256_unpacklo_epi64(a0, a2);
  w[1] = _mm256_unpackhi_epi64(a0, a2);
  w[2] = _mm256_unpacklo_epi64(a1, a3);
  w[3] = _mm256_unpackhi_epi64(a1, a3);
}

// Where a kernel reads a group's blocks: a group in memory (the copy's layout, or rows packed into
// a group), or 8 file-layout rows read directly and transposed in registers (decode: nothing is
// stored; about 2x faster than packing the rows first in kernels_bench).
struct InGroup {
  const uint8_t* g;  // block 0 of the group
  int block_bytes;
  // The 4 words (32-byte vectors) at bytes 16 * q of block b's rows: quad q of the group block.
  inline void Quad(int64_t b, int64_t at, __m256i (&w)[4]) const {
    const uint8_t* p = g + b * block_bytes + at;
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j)
      w[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * j));
  }
};
struct InRows {
  const uint8_t* const* rows;  // 8 rows
  int block_bytes;             // the file layout's
  inline void Words(int64_t b, int64_t offset, __m256i (&w)[4]) const {
    Transpose16(rows, b * block_bytes + offset, w);
  }
};

// A token's operands: its quants, block scales and a per-block extra (Q4_0: -8 times the sum of
// the block's quants; Q4_K: the bsums of its sub-blocks as int16 pairs, 4 words per block).
struct Token {
  const int8_t* x;
  const float* d;
  const int32_t* extra;
};

// ----- Q4_0 ------------------------------------------------------------------------------------
// Block (144 bytes): the 8 rows' f16 scales, then 4 chunks of 32 bytes: chunk c holds, per lane i,
// row i's weights 4c..4c+3 (low nibbles) and 16+4c..16+4c+3 (high nibbles). The integer sum
// starts at -8 * sum(x) (the weights are q - 8); then acc = fma(d_w * d_x, float(sum), acc).
struct Q4_0 {
  static constexpr int kBlock = 32, kBlockBytes = kQ4_0GroupBlockBytes, kT = 6;

  // Block b's scales (8 floats) and quant chunks.
  static inline void Load(const InGroup& in, int64_t b, __m256* dw, __m256i (&q)[4]) {
    const uint8_t* p = in.g + b * kBlockBytes;
    *dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    InGroup{p + 16, 0}.Quad(0, 0, q);
  }
  static inline void Load(const InRows& in, int64_t b, __m256* dw, __m256i (&q)[4]) {
    __m256i head[4];  // word 0 of each row: d | (its first two quant bytes) << 16
    in.Words(b, 0, head);
    *dw = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(head[0]));
    in.Words(b, 2, q);
  }

  // internal::PackGroup for 8 file-layout rows.
  static void Pack(const InRows& in, int64_t nb, uint8_t* out) {
    for (int64_t b = 0; b < nb; ++b, out += kBlockBytes) {
      __m256i w[4];
      in.Words(b, 0, w);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_cvtepi32_epi16(w[0]));
      in.Words(b, 2, w);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 + 32 * j), w[j]);
      }
    }
  }

  template <int T, class In>
  static void Run(const In& in, int64_t nb, const Token* tk, __m256 (&acc)[T]) {
    const __m256i m = _mm256_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; ++b) {
      __m256 dw;
      __m256i v[4], lo[4], hi[4];
      Load(in, b, &dw, v);
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        lo[c] = _mm256_and_si256(v[c], m);
        hi[c] = _mm256_and_si256(_mm256_srli_epi16(v[c], 4), m);
      }
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const int8_t* x = tk[t].x + 32 * b;
        __m256i s0 = _mm256_set1_epi32(tk[t].extra[b]);
        __m256i s1 = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          s0 = _mm256_dpbusd_epi32(s0, lo[c], Broadcast4(x + 4 * c));
          s1 = _mm256_dpbusd_epi32(s1, hi[c], Broadcast4(x + 16 + 4 * c));
        }
        const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(tk[t].d[b]));
        acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), acc[t]);
      }
    }
  }
};

// ----- Q8_0 ------------------------------------------------------------------------------------
// Block (272 bytes): the 8 rows' f16 scales, then 8 chunks of 32 bytes: chunk c holds, per lane i,
// row i's quants 4c..4c+3. They are moved to 0..255 (x ^ 0x80 = q + 128) to be vpdpbusd's
// unsigned operand; the sum starts at -128 * sum(x); then acc = fma(d_w * d_x, float(sum), acc).
struct Q8_0 {
  static constexpr int kBlock = 32, kBlockBytes = kQ8_0GroupBlockBytes, kT = 6;

  static inline void Load(const InGroup& in, int64_t b, __m256* dw, __m256i (&q)[8]) {
    const uint8_t* p = in.g + b * kBlockBytes;
    *dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#pragma GCC unroll 8
    for (int c = 0; c < 8; ++c) {
      q[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 + 32 * c));
    }
  }
  static inline void Load(const InRows& in, int64_t b, __m256* dw, __m256i (&q)[8]) {
    __m256i w[4];
    in.Words(b, 0, w);  // word 0 of each row: d | (its first two quants) << 16
    *dw = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(w[0]));
    in.Words(b, 2, w);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) q[c] = w[c];
    in.Words(b, 18, w);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) q[4 + c] = w[c];
  }
  static void Pack(const InRows& in, int64_t nb, uint8_t* out) {
    for (int64_t b = 0; b < nb; ++b, out += kBlockBytes) {
      __m256i w[4];
      in.Words(b, 0, w);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_cvtepi32_epi16(w[0]));
      for (int h = 0; h < 2; ++h) {
        in.Words(b, 2 + 16 * h, w);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 + 128 * h + 32 * j), w[j]);
        }
      }
    }
  }

  template <int T, class In>
  static void Run(const In& in, int64_t nb, const Token* tk, __m256 (&acc)[T]) {
    const __m256i k80 = _mm256_set1_epi8(static_cast<char>(0x80));
    for (int64_t b = 0; b < nb; ++b) {
      __m256 dw;
      __m256i q[8];
      Load(in, b, &dw, q);
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) q[c] = _mm256_xor_si256(q[c], k80);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const int8_t* x = tk[t].x + 32 * b;
        __m256i s0 = _mm256_set1_epi32(tk[t].extra[b]);
        __m256i s1 = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          s0 = _mm256_dpbusd_epi32(s0, q[c], Broadcast4(x + 4 * c));
          s1 = _mm256_dpbusd_epi32(s1, q[4 + c], Broadcast4(x + 16 + 4 * c));
        }
        const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(tk[t].d[b]));
        acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), acc[t]);
      }
    }
  }
};

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
    const __m256i m = _mm256_set1_epi8(0x0f);
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
#pragma GCC unroll 4
          for (int k = 0; k < 4; ++k) {
            lo[k] = _mm256_and_si256(v[k], m);
            hi[k] = _mm256_and_si256(_mm256_srli_epi16(v[k], 4), m);
          }
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

// ----- tiles -----------------------------------------------------------------------------------

template <class K, int T, class In>
void RunStore(const In& in, int64_t nb, const Token* tk, float* y, int64_t ys, int nr) {
  __m256 acc[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  K::template Run<T>(in, nb, tk, acc);
  const __mmask8 keep = static_cast<__mmask8>((1u << nr) - 1);
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm256_mask_storeu_ps(y + t * ys, keep, acc[t]);
}

template <class K, class In, int T = K::kT>
void RunTokens(const In& in, int64_t nb, const Token* tk, float* y, int64_t ys, int nr, int nt) {
  if constexpr (T > 1) {
    if (nt < T) return RunTokens<K, In, T - 1>(in, nb, tk, y, ys, nr, nt);
  }
  RunStore<K, T>(in, nb, tk, y, ys, nr);
}

// Rows [r0, r1) x tokens [t0, t1), group by group (r0 is a multiple of 8 for a grouped matrix:
// MatMul's tiles start at multiples of 8).
// Rows [r0, r1) x tokens [t0, t1), group by group (r0 is a multiple of 8 for a grouped matrix:
// MatMul's tiles start at multiples of 8). File-layout rows are read directly when the tile's
// tokens take one pass over the group, else packed into a group once for all the passes.
template <class K>
void Tile(const Matrix& w, const QuantActs& a, const int32_t* extra, int extra_per_block, float* y,
          int64_t ys, int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
  const int64_t nb = w.cols / K::kBlock;
  const bool grouped = w.interleave == kGroupRows;
  if (grouped && r0 % kGroupRows != 0) std::abort();
  const int file_block = static_cast<int>(gguf::TypeInfo(w.type).type_size);
  uint8_t* packed = scratch.Get(static_cast<size_t>(nb * K::kBlockBytes));
  for (int64_t r = r0; r < r1; r += kGroupRows) {
    const int nr = static_cast<int>(r1 - r < kGroupRows ? r1 - r : kGroupRows);
    const auto for_tokens = [&](const auto& in) {
      for (int64_t t = t0; t < t1; t += K::kT) {
        const int nt = static_cast<int>(t1 - t < K::kT ? t1 - t : K::kT);
        Token tk[K::kT];
        for (int i = 0; i < nt; ++i) {
          tk[i] = {a.qs + (t + i) * a.cols, a.d + (t + i) * nb,
                   extra + (t + i) * nb * extra_per_block};
        }
        RunTokens<K>(in, nb, tk, y + t * ys + r, ys, nr, nt);
      }
    };
    if (grouped && nr == kGroupRows) {
      for_tokens(InGroup{w.data + r * w.row_bytes, K::kBlockBytes});
      continue;
    }
    // File layout (a grouped matrix's last rows too).
    const uint8_t* rows[kGroupRows];
    for (int i = 0; i < kGroupRows; ++i) {
      rows[i] = i < nr ? w.data + (r + i) * w.row_bytes : nullptr;
    }
    if (nr < kGroupRows) {
      internal::PackGroup(w.type, rows, nb, packed);
    } else if (t1 - t0 > K::kT) {
      K::Pack(InRows{rows, file_block}, nb, packed);
    } else {
      for_tokens(InRows{rows, file_block});
      continue;
    }
    for_tokens(InGroup{packed, K::kBlockBytes});
  }
}

}  // namespace

void GroupedMatMulTile(const Matrix& w, const QuantActs& a, float* y, int64_t ys, int64_t r0,
                       int64_t r1, int64_t t0, int64_t t1) {
  if (w.type == TensorType::kQ4_0) {
    Tile<Q4_0>(w, a, a.block_init, 1, y, ys, r0, r1, t0, t1);
  } else if (w.type == TensorType::kQ8_0) {
    Tile<Q8_0>(w, a, a.block_init, 1, y, ys, r0, r1, t0, t1);
  } else if (w.type == TensorType::kQ4_K) {
    Tile<Q4_K>(w, a, a.q4_k_bsum_pairs, 4, y, ys, r0, r1, t0, t1);
  } else {
    std::abort();
  }
}

}  // namespace pipeinfer::kernels::avx512
