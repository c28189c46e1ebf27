// Internal, AVX-512 VNNI translation units only (compiled with -mavx512f/bw/dq/vl/vnni): the
// framework of the grouped integer MatMul kernels (qdot_groups_avx512.cc: Q4_0, Q8_0;
// qdot_groups_kquant_avx512.cc: Q4_K, Q6_K), for weights in groups of 8 rows (interleave.h). It
// uses the per-thread scratch and the declarations of qdot_avx512_tile.h.
//
// One row per 32-bit lane of 256-bit vectors. On AMD Zen 4 the 512-bit forms of the unpacking
// cost about twice as much (bench/results/kernels-avx512-ymm-2026-12-07.md). Per group and block:
//   * the 8 rows' scales are converted in one vector;
//   * the quants are unpacked once for all the tile's tokens;
//   * a token's activations are broadcast 4 bytes at a time, so vpdpbusd (weights unsigned,
//     activations signed) leaves row i's integer sums in lane i.
// Nothing is summed across lanes. Every (row, token) goes through the same operations in the
// same order whatever the tile, the batch, the thread split or the weights' layout: file-layout
// rows are read 8 side by side (transposed in registers) or packed into a group first.
//
// A kernel K provides kBlock (weights per block), kBlockBytes (group block), kT (tokens per pass),
// Pack(InRows, nb, out) and Run<T>(In, nb, tokens, acc) for In = InGroup and InRows.
//
// Everything here has internal linkage: nothing may be shared with code compiled for other CPUs.
#pragma once

#include "kernels/interleave.h"
#include "kernels/qdot_avx512_tile.h"

namespace pipeinfer::kernels::avx512 {

// The grouped Q4_K and Q6_K tiles (qdot_groups_kquant_avx512.cc).
void GroupedKQuantTile(const Matrix& w, const internal::QuantActs& a, float* y, int64_t ys,
                       int64_t r0, int64_t r1, int64_t t0, int64_t t1);

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

// The low and high nibbles of 4 vectors of packed 4-bit weights, as bytes.
inline void Nibbles(const __m256i (&v)[4], __m256i (&lo)[4], __m256i (&hi)[4]) {
  const __m256i m = _mm256_set1_epi8(0x0f);
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    lo[c] = _mm256_and_si256(v[c], m);
    hi[c] = _mm256_and_si256(_mm256_srli_epi16(v[c], 4), m);
  }
}

// A token's operands: its quants, block scales and a per-block extra (Q4_0, Q8_0: where the
// block's integer sum starts, QuantActs::block_init; Q4_K: the bsums of its sub-blocks as int16
// pairs, 4 words per block).
struct Token {
  const int8_t* x;
  const float* d;
  const int32_t* extra;
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
}  // namespace pipeinfer::kernels::avx512
