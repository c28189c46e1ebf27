// Internal: the weight formats the kernels decode, and their portable block decoders.
//
// Byte layouts (ggml's; all multi-byte fields little-endian, "f16" = IEEE half):
//
//   Q4_0  (32 weights, 18 bytes)  f16 d | u8 qs[16]
//         byte j holds weight j in its low nibble and weight j+16 in its high nibble;
//         w = d * (q - 8).
//   Q4_1  (32, 20)                f16 d | f16 m | u8 qs[16]        same nibbles; w = d * q + m.
//   Q5_0  (32, 22)                f16 d | u8 qh[4] | u8 qs[16]
//         nibbles as Q4_0; qh read as one little-endian u32 gives the fifth bit of weight j in
//         bit j (j < 32); w = d * (q - 16).
//   Q5_1  (32, 24)                f16 d | f16 m | u8 qh[4] | u8 qs[16]   w = d * q + m.
//   Q8_0  (32, 34)                f16 d | i8 qs[32]                w = d * q.
//
// The K-quants use 256-weight super-blocks cut into sub-blocks, each with its own small integer
// scale (and min) that multiplies a per-super-block f16 factor:
//
//   Q2_K  (256, 84)   u8 scales[16] | u8 qs[64] | f16 d | f16 dmin
//         16 sub-blocks of 16; scales[s] = scale (low nibble) and min (high nibble).
//         Weight i = 128*h + 32*j + l (h < 2, j < 4, l < 32): q = (qs[32*h + l] >> 2*j) & 3,
//         sub-block s = i / 16;  w = (d * sc) * q - (dmin * m).
//   Q3_K  (256, 110)  u8 hmask[32] | u8 qs[64] | u8 scales[12] | f16 d
//         Same 2-bit placement as Q2_K plus a third bit: bit (4*h + j) of hmask[l]; when that
//         bit is CLEAR the value is lowered by 4 (q in [-4, 3]). 16 six-bit scales: low 4 bits
//         in the nibbles of scales[0..7] (s < 8: low nibble of scales[s], else high nibble of
//         scales[s-8]), top 2 bits in scales[8 + s%4] at bit 2*(s/4); sc = that - 32;
//         w = (d * sc) * q.
//   Q4_K  (256, 144)  f16 d | f16 dmin | u8 scales[12] | u8 qs[128]
//         8 sub-blocks of 32 with 6-bit scale sc and 6-bit min m (see ScaleMinK4). qs is four
//         runs of 32 bytes; run c gives sub-block 2c (low nibbles) and 2c+1 (high nibbles), i.e.
//         weight 64*c + l is qs[32*c + l] & 15 and weight 64*c + 32 + l is qs[32*c + l] >> 4.
//         w = (d * sc) * q - (dmin * m).
//   Q5_K  (256, 176)  f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]
//         As Q4_K, plus a fifth bit: bit 2c of qh[l] for weight 64c + l, bit 2c+1 for 64c+32+l.
//   Q6_K  (256, 210)  u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d
//         16 sub-blocks of 16 with signed 8-bit scales (sub-block s = i / 16). Two halves of 128
//         weights; half h uses ql[64h ..], qh[32h ..]. Within a half, for l < 32:
//           weight l      : low nibble of ql[l]      | bits 0-1 of qh[l] << 4
//           weight l + 32 : low nibble of ql[l + 32] | bits 2-3 of qh[l] << 4
//           weight l + 64 : high nibble of ql[l]     | bits 4-5 of qh[l] << 4
//           weight l + 96 : high nibble of ql[l + 32]| bits 6-7 of qh[l] << 4
//         q = that - 32; w = (d * sc) * q.
//
// Each product is computed in float exactly in the order written, so every path (portable,
// AVX2) decodes bit-identical weights (the library is compiled with -ffp-contract=off).
#pragma once

#include <cstdint>

#include "gguf/tensor_type.h"

namespace pipeinfer::kernels::internal {

// Decodes `n_blocks` consecutive blocks at `src` into n_blocks * block floats.
using DecodeFn = void (*)(const uint8_t* src, int64_t n_blocks, float* out);

struct Format {
  gguf::TensorType type;
  int block;  // weights per block (1 for F32/F16/BF16)
  int bytes;  // bytes per block
  DecodeFn decode;
};

// nullptr for types the kernels do not implement.
const Format* FindFormat(gguf::TensorType type);

namespace {  // internal linkage, see half.h

// The 6-bit scale and min of sub-block j (< 8) of a Q4_K/Q5_K block: sub-blocks 0-3 keep theirs
// in the low 6 bits of scales[j] and scales[j+4]; sub-blocks 4-7 keep the low 4 bits in the
// nibbles of scales[j+4] and the top 2 bits in the spare top bits of scales[j-4] (scale) and
// scales[j] (min).
inline void ScaleMinK4(const uint8_t* scales, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = scales[j] & 63;
    *m = scales[j + 4] & 63;
  } else {
    *sc = (scales[j + 4] & 0xf) | ((scales[j - 4] >> 6) << 4);
    *m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
  }
}

// The 16 signed scales of a Q3_K block (see above).
inline void ScalesQ3K(const uint8_t* scales, int out[16]) {
  for (int s = 0; s < 16; ++s) {
    const int low = s < 8 ? scales[s] & 0xf : scales[s - 8] >> 4;
    const int high = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
    out[s] = (low | (high << 4)) - 32;
  }
}

}  // namespace
}  // namespace pipeinfer::kernels::internal
