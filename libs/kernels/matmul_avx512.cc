// AVX-512 tile kernels of the float MatMul path for F32, F16 and BF16 weights (compiled with
// -mavx512f/bw/dq/vl -mf16c -mfma; only called when the CPU has them).
//
// A micro-kernel computes R rows x T tokens: per step of 16 columns it converts 16 weights of each
// of the R rows to F32 once, loads 16 activations of each of the T tokens once, and does R x T
// FMAs into accumulators that stay in registers for the whole row (for batches 3 x 4 tiles, or
// 4 x 3 on rows grouped by 8; for a single token, where the weights stream from memory, one row
// at a time, or the 8 rows of a group). Rows are in the file layout or grouped (interleave.h:
// 16 columns of 8 rows per block), read in place either way, as are the activations (no
// repacking); the last step of a file-layout row uses masked loads.
//
// Summation order of every (row, token) pair, whatever R, T, the batch or the thread split:
//   a0 = a1 = 0 (16 lanes); for each step s of 16 columns, in order (the last one zero-padded):
//     a(s % 2) = fma(w[16s:16s+16], x[16s:16s+16], a(s % 2))
//   y = Sum16(a0 + a1) (fixed pairwise reduction).
// Two chains per pair keep a single row and token (decode) from waiting on the FMA latency.
// F16 and BF16 weights convert to F32 exactly; AVX-512 BF16's dot instruction is not used because
// it would round the activations to BF16.
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

#include "kernels/interleave.h"
#include "kernels/simd.h"

namespace pipeinfer::kernels::avx512 {
namespace {

using gguf::TensorType;

inline float Sum16(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// 16 weights at p as floats (Part: the first lanes of m).
struct LoadF32 {
  static constexpr int64_t kBytes = 4;
  static inline __m512 Full(const uint8_t* p) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(p));
  }
  static inline __m512 Part(const uint8_t* p, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(p));
  }
};

struct LoadF16 {
  static constexpr int64_t kBytes = 2;
  static inline __m512 Full(const uint8_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static inline __m512 Part(const uint8_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};

struct LoadBF16 {
  static constexpr int64_t kBytes = 2;
  static inline __m512 Widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static inline __m512 Full(const uint8_t* p) {
    return Widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static inline __m512 Part(const uint8_t* p, __mmask16 m) {
    return Widen(_mm256_maskz_loadu_epi16(m, p));
  }
};

struct Args {
  const uint8_t* row[8];  // column 0 of each row
  // Bytes from column k to column k + 1 of a row: the value's size (file layout), or 8 times it
  // (grouped rows: 16 columns of the 8 rows per block; k is a multiple of 16 where it is read).
  int64_t col_bytes;
  const float* x[8];
  float* y;  // y[t * ys + r] for the tile's first row and token
  int64_t ys;
  int64_t cols;
};

// One step of 16 columns at k (`m` masks the loads of a last, partial step) for every pair of the
// tile, into the accumulators `acc`: acc = fma(w[k:k+16], x[k:k+16], acc).
template <class L, int R, int T, bool kMasked>
__attribute__((always_inline)) inline void Step(const Args& g, int64_t k, __mmask16 m,
                                                __m512 acc[R][T]) {
  __m512 w[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const uint8_t* p = g.row[r] + k * g.col_bytes;
    w[r] = kMasked ? L::Part(p, m) : L::Full(p);
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    __m512 x = kMasked ? _mm512_maskz_loadu_ps(m, g.x[t] + k) : _mm512_loadu_ps(g.x[t] + k);
    // One load per token and step: without this GCC folds the load into each of the R FMAs
    // (R loads instead of one; the loop is then bound by loads).
    __asm__("" : "+v"(x));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(w[r], x, acc[r][t]);
  }
}

template <class L, int R, int T>
void Run(const Args& g) {
  __m512 a0[R][T], a1[R][T];  // even and odd steps of 16 columns
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) a0[r][t] = a1[r][t] = _mm512_setzero_ps();
  }
  int64_t k = 0;
#pragma GCC unroll 4
  for (; k + 32 <= g.cols; k += 32) {
    Step<L, R, T, false>(g, k, 0, a0);
    Step<L, R, T, false>(g, k + 16, 0, a1);
  }
  const int64_t left = g.cols - k;  // 0..31
  if (left >= 16) Step<L, R, T, false>(g, k, 0, a0);
  if (left % 16 != 0) {
    const __mmask16 m = static_cast<__mmask16>((1u << (left % 16)) - 1);
    Step<L, R, T, true>(g, k + left / 16 * 16, m, left >= 16 ? a1 : a0);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) g.y[t * g.ys + r] = Sum16(_mm512_add_ps(a0[r][t], a1[r][t]));
  }
}

// Up to R rows x KT tokens (R x KT x 2 accumulators: at most 24, with R weight vectors and one
// activation vector).
template <class L, int R, int KT>
void RunRows(const Args& g, int nt) {
  static_assert(R * KT <= 12);
  if constexpr (KT > 1) {
    if (nt < KT) return RunRows<L, R, KT - 1>(g, nt);
  }
  Run<L, R, KT>(g);
}

// A single token (decode) streams the weights from memory one row at a time (several file-layout
// rows read side by side defeat the hardware prefetchers: measured slower), or a group of 8 rows
// at a time where they are grouped (interleave.h: one stream, each activation loaded once for the
// 8 rows). From 2 tokens on, tiles of 3 rows x 4 tokens (measured faster), or of 4 rows x 3 tokens
// on grouped rows (a tile then reads whole cache lines: 4 rows' 16 columns are 128 bytes for
// F16).
constexpr int64_t kSmallBatch = 1;

// Rows [r0, r1) x tokens [t0, t1) in tiles of KR rows x KT tokens (KR = 1 for a single token),
// with the rows at `row(r)`, `col_bytes` per column.
template <class L, int KR, int KT, class RowAt>
void Rows(const RowAt& row, int64_t col_bytes, int64_t cols, const float* x, int64_t xs, float* y,
          int64_t ys, int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
  Args g;
  g.ys = ys;
  g.cols = cols;
  g.col_bytes = col_bytes;
  const int64_t kr = t1 - t0 <= kSmallBatch ? 1 : KR;
  for (int64_t r = r0; r < r1; r += kr) {
    const int nr = static_cast<int>(r1 - r < kr ? r1 - r : kr);
    for (int i = 0; i < nr; ++i) g.row[i] = row(r + i);
    for (int64_t t = t0; t < t1; t += KT) {
      const int nt = static_cast<int>(t1 - t < KT ? t1 - t : KT);
      for (int i = 0; i < nt; ++i) g.x[i] = x + (t + i) * xs;
      g.y = y + t * ys + r;
      if constexpr (KR >= 4) {
        if (nr == 4) {
          RunRows<L, 4, KT>(g, nt);
          continue;
        }
      }
      if (nr == 3) {
        RunRows<L, 3, KT>(g, nt);
      } else if (nr == 2) {
        RunRows<L, 2, KT>(g, nt);
      } else {
        RunRows<L, 1, KT>(g, nt);
      }
    }
  }
}

template <class L>
void Tile(const Matrix& w, const float* x, int64_t xs, float* y, int64_t ys, int64_t r0, int64_t r1,
          int64_t t0, int64_t t1) {
  const auto plain = [&](int64_t r) { return w.data + r * w.row_bytes; };
  if (w.interleave == 1) {
    return Rows<L, 3, 4>(plain, L::kBytes, w.cols, x, xs, y, ys, r0, r1, t0, t1);
  }
  // Grouped rows (r0 is a multiple of 8): row r at byte 16 * (r % 8) * L::kBytes of its group;
  // the last rows % 8 rows in the file layout.
  const int64_t whole = w.rows - w.rows % kGroupRows, end = r1 < whole ? r1 : whole;
  const auto grouped = [&](int64_t r) {
    return w.data + (r - r % kGroupRows) * w.row_bytes +
           r % kGroupRows * kFloatGroupCols * L::kBytes;
  };
  const int64_t col_bytes = kGroupRows * L::kBytes;
  if (t1 - t0 == 1) {
    Args g;
    g.ys = 0;
    g.cols = w.cols;
    g.col_bytes = col_bytes;
    g.x[0] = x + t0 * xs;
    for (int64_t r = r0; r < end; r += kGroupRows) {
      for (int i = 0; i < kGroupRows; ++i) g.row[i] = grouped(r + i);
      g.y = y + t0 * ys + r;
      Run<L, kGroupRows, 1>(g);
    }
  } else if (r0 < end) {
    Rows<L, 4, 3>(grouped, col_bytes, w.cols, x, xs, y, ys, r0, end, t0, t1);
  }
  if (r1 > whole) {
    const int64_t from = r0 > whole ? r0 : whole;
    Rows<L, 3, 4>(plain, L::kBytes, w.cols, x, xs, y, ys, from, r1, t0, t1);
  }
}

}  // namespace

bool HasFloatKernel(TensorType type) {
  return type == TensorType::kF32 || type == TensorType::kF16 || type == TensorType::kBF16;
}

void MatMulTile(const Matrix& w, const float* x, int64_t x_stride, float* y, int64_t y_stride,
                int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
  switch (w.type) {
    case TensorType::kF32:
      return Tile<LoadF32>(w, x, x_stride, y, y_stride, r0, r1, t0, t1);
    case TensorType::kF16:
      return Tile<LoadF16>(w, x, x_stride, y, y_stride, r0, r1, t0, t1);
    case TensorType::kBF16:
      return Tile<LoadBF16>(w, x, x_stride, y, y_stride, r0, r1, t0, t1);
    default:
      return;
  }
}

}  // namespace pipeinfer::kernels::avx512
