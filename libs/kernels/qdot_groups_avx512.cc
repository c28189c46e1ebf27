// AVX-512 VNNI kernels for Q4_0 and Q8_0 weights in groups of 8 rows (qdot_groups_avx512.h),
// and the dispatch of the grouped kernels.
#include "kernels/qdot_groups_avx512.h"

namespace pipeinfer::kernels::avx512 {
namespace {

// One block of 32 for T tokens: u[0..3] hold (per lane) the unsigned weights 4c..4c+3, u[4..7]
// the weights 16+4c..16+4c+3; sum = init + the products with the token's quants, and
// acc = fma(d_w * d_x, float(sum), acc).
template <int T>
inline void Block32(const __m256i (&u)[8], __m256 dw, const Token* tk, int64_t b,
                    __m256 (&acc)[T]) {
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    const int8_t* x = tk[t].x + 32 * b;
    __m256i s0 = _mm256_set1_epi32(tk[t].extra[b]);
    __m256i s1 = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      s0 = _mm256_dpbusd_epi32(s0, u[c], Broadcast4(x + 4 * c));
      s1 = _mm256_dpbusd_epi32(s1, u[4 + c], Broadcast4(x + 16 + 4 * c));
    }
    const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(tk[t].d[b]));
    acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), acc[t]);
  }
}

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
    for (int64_t b = 0; b < nb; ++b) {
      __m256 dw;
      __m256i v[4], lo[4], hi[4];
      Load(in, b, &dw, v);
      Nibbles(v, lo, hi);
      const __m256i u[8] = {lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]};
      Block32(u, dw, tk, b, acc);
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
      Block32(q, dw, tk, b, acc);
    }
  }
};

}  // namespace

void GroupedMatMulTile(const Matrix& w, const QuantActs& a, float* y, int64_t ys, int64_t r0,
                       int64_t r1, int64_t t0, int64_t t1) {
  if (w.type == TensorType::kQ4_0) {
    Tile<Q4_0>(w, a, a.block_init, 1, y, ys, r0, r1, t0, t1);
  } else if (w.type == TensorType::kQ8_0) {
    Tile<Q8_0>(w, a, a.block_init, 1, y, ys, r0, r1, t0, t1);
  } else {
    GroupedKQuantTile(w, a, y, ys, r0, r1, t0, t1);
  }
}

}  // namespace pipeinfer::kernels::avx512
