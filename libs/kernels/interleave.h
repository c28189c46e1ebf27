// Row-interleaved weight layouts: groups of 8 rows stored block by block, so that a kernel reads
// 8 rows as one sequential stream and computes them in the 8 lanes of one vector (one scale
// conversion per block for all 8 rows, no horizontal sums).
//
// Rows 8g .. 8g + 7 start at byte 8g * row_bytes (row_bytes is the file layout's, so row offsets
// that are multiples of 8 are computed as for the file layout); the group's blocks follow each
// other, block b at b * (8 * the type's block bytes):
//   * Q4_0 (144 bytes per group block): f16 d[8], the 8 rows' scales (row i at bytes 2i, 2i + 1);
//     then u8 qs[4][8][4]: chunk c (c < 4), row i: bytes 4c .. 4c + 3 of row i's 16 quant bytes.
//     The 32-byte chunk c so holds, per 32-bit lane i, row i's weights 4c .. 4c + 3 in its low
//     nibbles and 16 + 4c .. 16 + 4c + 3 in its high nibbles.
//   * Q8_0 (272 bytes): the same with the 32 quant bytes: f16 d[8], then chunk c (c < 8), row i:
//     quants 4c .. 4c + 3 of row i.
//   * Q4_K (1152 bytes): the 8 rows' 144-byte blocks transposed by 32-bit words: word w (bytes
//     4w .. 4w + 3) of row i at byte 32w + 4i. Words 0-3 are d | dmin and the 12 scale bytes,
//     words 4-35 the quants (32 bytes of 8 rows per word).
//   * Q6_K (1680 bytes): f16 d[8]; then the 16 scale bytes of the 8 rows by scale, scale s of row
//     i at byte 16 + 8s + i; then the ql and qh words (bytes 0 .. 127 and 128 .. 191 of the file
//     block) transposed by 32-bit words and ordered as the kernel reads them, in 16 triples of
//     96 bytes: triple 8h + m (h < 2, m < 8) holds ql words 16h + m and 16h + 8 + m and qh word
//     8h + m (word 32 + 8h + m of the file block), row i's word at 4i in each.
//   * F32, F16, BF16 (blocks of kFloatGroupCols = 16 columns; 8 * 16 values per group block): row
//     i's 16 values at byte 16 * i * (the value's bytes). A single token then reads the 8 rows as
//     one stream and each activation once for the 8 rows (file-layout rows of more than about
//     4096 activations stream at half speed: the activations no longer stay in L1).
// A column range starting at block b0 is the same layout starting b0 * (group block bytes)
// further (Matrix::interleave says how far a block moves; for the float types a range must start
// and end on a 16-column block). The last rows % 8 rows, which make no
// whole group, stay in the file layout at r * row_bytes.
//
// Which matrices are grouped is decided when the weights are copied for the kernels
// (PreferredRowInterleave); every kernel path accepts both layouts and gives the same bits for
// both (the paths that compute on the file layout restore it chunk by chunk; the AVX-512 VNNI
// kernels read file-layout rows 8 side by side, or pack them into a group for tiles of several
// passes; the AVX-512 float kernels read either layout in place).
#pragma once

#include <cstdint>

#include "kernels/kernels.h"

namespace pipeinfer::kernels {

inline constexpr int kGroupRows = 8;
inline constexpr int kQ4_0GroupBlockBytes = 8 * 18;
inline constexpr int kQ8_0GroupBlockBytes = 8 * 34;
inline constexpr int kQ4_KGroupBlockBytes = 8 * 144;
inline constexpr int kQ6_KGroupBlockBytes = 8 * 210;
inline constexpr int kFloatGroupCols = 16;

// True for the types that have a grouped layout (Q4_0, Q8_0, Q4_K, Q6_K, F32, F16, BF16).
bool HasGroupedLayout(gguf::TensorType type);

// Columns per block of the grouped layout: the type's block, or kFloatGroupCols for F32, F16 and
// BF16. A grouped matrix's column count and column ranges are multiples of it.
int64_t GroupBlockCols(gguf::TensorType type);

// The interleave the active kernel path wants for a matrix of this type and shape: 8 when there
// are at least 8 rows for the quantized types with a grouped layout on the AVX-512 VNNI path, and
// for F32/F16/BF16 with a multiple of 16 columns on the AVX-512 path; 1 (the file layout)
// otherwise.
int PreferredRowInterleave(gguf::TensorType type, int64_t rows, int64_t cols);

// Writes `plain` (file layout, interleave 1) in the layout of `interleave` (1: a copy; 8: a type
// with a grouped layout) to `out` (rows * row_bytes bytes, the same size).
void InterleaveRows(const Matrix& plain, int interleave, uint8_t* out);

namespace internal {
// Where word w (< 48: ql, then qh) of a Q6_K file block lies in its group block: row 0's copy of
// it (row i's is 4i further), in triple 8h + m as described above.
constexpr int Q6_KGroupWordAt(int w) {
  return 144 + (w < 32 ? 96 * (8 * (w / 16) + w % 8) + 32 * (w % 16 / 8) : 96 * (w - 32) + 64);
}

// One group: blocks [0, nb) of up to 8 file-layout rows (`rows[i]` null: a row of zeros, whose
// products are 0) into nb group blocks at `out`.
void PackGroup(gguf::TensorType type, const uint8_t* const rows[kGroupRows], int64_t nb,
               uint8_t* out);
// Row i (< 8) of a group (nb group blocks at `group`) in the file layout (nb blocks at `out`).
void UnpackRow(gguf::TensorType type, const uint8_t* group, int64_t nb, int i, uint8_t* out);
// Rows [r0, r0 + n) of the grouped `w` (r0 a multiple of 8; n too, unless the range ends at
// w.rows) in the file layout, rows packed back to back, at `out`.
void DeinterleaveRows(const Matrix& w, int64_t r0, int64_t n, uint8_t* out);
}  // namespace internal

}  // namespace pipeinfer::kernels
