// Internal, for the .cu files (and, through the host entry points of cuda_launch.h, for tests):
// decoding weights in their GGUF block layout, and the per-lane work of the mat-vec kernel. Every
// function here compiles for the device and for the host (cuda_hd.cuh), so that tests without a
// GPU check the decoders against the CPU decoders bit for bit and the mat-vec's indexing against
// the CPU product.
//
// Decoding works on groups of 8 consecutive weights of a row (group g = weights 8g .. 8g+7). Every
// block format of the device types holds a whole number of groups (blocks of 32 or 256 weights),
// so a group never straddles two blocks; plain types (F32/F16/BF16) may end in a partial group
// when cols is not a multiple of 8. The decoders compute each weight with the same float
// operations, in the same order, as the CPU decoders in libs/kernels/dequant.cc (see formats.h for
// the layouts). The *_rn intrinsics keep nvcc from fusing a multiply and an add into one FMA,
// which would round differently from the CPU, so the GPU decodes bit-identical weights.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/cuda_hd.cuh"
#include "gguf/tensor_type.h"

namespace pipeinfer::cuda::internal {

using gguf::TensorType;

constexpr int kGroup = 8;      // weights decoded together by one thread
constexpr int kMaxTokens = 8;  // = kMatVecMaxTokens of cuda_ops.h

// A little-endian f16 at a 2-byte aligned address.
PI_HD float LoadHalf(const uint8_t* p) { return HalfBitsToFloat(LoadAs<uint16_t>(p)); }
// 8 bytes from a 2-byte aligned address (every quantized field we read is at an even offset of an
// even-sized block).
PI_HD void Load8(const uint8_t* p, uint8_t out[8]) {
  PI_UNROLL
  for (int k = 0; k < 4; ++k) {
    const uint16_t v = LoadAs<uint16_t>(p + 2 * k);
    out[2 * k] = static_cast<uint8_t>(v & 0xff);
    out[2 * k + 1] = static_cast<uint8_t>(v >> 8);
  }
}

// --- Group decoders: fill w[0..7] with weights 8g..8g+7 of `row`; return how many are valid (the
// rest are zero). `aligned` = the row starts at a 16-byte boundary.

// A whole group from a 16-byte aligned address.
PI_HD void DecodeF32Full(const uint8_t* p, float w[8]) {
  const float4 a = LoadAs<float4>(p), b = LoadAs<float4>(p + 16);
  w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w;
  w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
}

PI_HD int DecodeF32(const uint8_t* row, int64_t g, int64_t cols, bool aligned, float w[8]) {
  const uint8_t* p = row + 4 * kGroup * g;
  const int64_t left = cols - kGroup * g;
  if (left >= kGroup && aligned) {
    DecodeF32Full(p, w);
    return kGroup;
  }
  const int n = left < kGroup ? static_cast<int>(left) : kGroup;
  PI_UNROLL
  for (int k = 0; k < kGroup; ++k) w[k] = k < n ? LoadAs<float>(p + 4 * k) : 0.0f;
  return n;
}

// F16 (bf16 = false) or BF16 (bf16 = true) elements. A whole group from a 16-byte aligned address:
PI_HD void Decode16Full(const uint8_t* p, bool bf16, float w[8]) {
  const uint4 v = LoadAs<uint4>(p);
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
  PI_UNROLL
  for (int k = 0; k < 4; ++k) {
    w[2 * k] = bf16 ? Bf16BitsToFloat(words[k]) : HalfBitsToFloat(words[k]);
    w[2 * k + 1] = bf16 ? Bf16BitsToFloat(words[k] >> 16) : HalfBitsToFloat(words[k] >> 16);
  }
}

PI_HD int Decode16(const uint8_t* row, int64_t g, int64_t cols, bool aligned, bool bf16,
                   float w[8]) {
  const uint8_t* p = row + 2 * kGroup * g;
  const int64_t left = cols - kGroup * g;
  if (left >= kGroup && aligned) {
    Decode16Full(p, bf16, w);
    return kGroup;
  }
  const int n = left < kGroup ? static_cast<int>(left) : kGroup;
  PI_UNROLL
  for (int k = 0; k < kGroup; ++k) {
    const uint32_t bits = k < n ? LoadAs<uint16_t>(p + 2 * k) : 0u;
    w[k] = k < n ? (bf16 ? Bf16BitsToFloat(bits) : HalfBitsToFloat(bits)) : 0.0f;
  }
  return n;
}

// Q8_0: 34-byte blocks of 32: f16 d | i8 qs[32]; w = q * d. Group j (< 4) of a block is qs[8j..].
PI_HD int DecodeQ8_0(const uint8_t* row, int64_t g, float w[8]) {
  const uint8_t* blk = row + 34 * (g / 4);
  const int j = static_cast<int>(g % 4);
  const float d = LoadHalf(blk);
  uint8_t q[8];
  Load8(blk + 2 + 8 * j, q);
  PI_UNROLL
  for (int k = 0; k < 8; ++k) w[k] = MulRn(static_cast<float>(static_cast<int8_t>(q[k])), d);
  return kGroup;
}

// Q4_0: 18-byte blocks of 32: f16 d | u8 qs[16]; weight i < 16 is the low nibble of qs[i], weight
// i + 16 the high nibble; w = (q - 8) * d. Group j: bytes qs[8 * (j % 2) ..], nibble j / 2.
PI_HD int DecodeQ4_0(const uint8_t* row, int64_t g, float w[8]) {
  const uint8_t* blk = row + 18 * (g / 4);
  const int j = static_cast<int>(g % 4);
  const float d = LoadHalf(blk);
  const int shift = (j >> 1) * 4;
  uint8_t q[8];
  Load8(blk + 2 + 8 * (j & 1), q);
  PI_UNROLL
  for (int k = 0; k < 8; ++k) w[k] = MulRn(static_cast<float>(((q[k] >> shift) & 0xf) - 8), d);
  return kGroup;
}

// Q4_K: 144-byte blocks of 256: f16 d | f16 dmin | u8 scales[12] | u8 qs[128]. Weight 64c + l
// (l < 32) is the low nibble of qs[32c + l] (sub-block 2c), weight 64c + 32 + l the high nibble
// (sub-block 2c + 1); w = (d * sc) * q - dmin * m with the 6-bit sc, m of the sub-block.
PI_HD int DecodeQ4_K(const uint8_t* row, int64_t g, bool aligned, float w[8]) {
  const uint8_t* blk = row + 144 * (g / 32);
  const int gi = static_cast<int>(g % 32);
  const int c = gi / 8;             // 64-weight chunk
  const int r = (gi % 8) * kGroup;  // offset in the chunk: 0 .. 56
  const int sub = 2 * c + (r >= 32 ? 1 : 0);
  const int shift = r >= 32 ? 4 : 0;
  const uint8_t* qs = blk + 16 + 32 * c + (r % 32);
  const uint8_t* scales = blk + 4;
  int sc, m;
  if (sub < 4) {
    sc = scales[sub] & 63;
    m = scales[sub + 4] & 63;
  } else {
    sc = (scales[sub + 4] & 0xf) | ((scales[sub - 4] >> 6) << 4);
    m = (scales[sub + 4] >> 4) | ((scales[sub] >> 6) << 4);
  }
  const float d_sc = MulRn(LoadHalf(blk), static_cast<float>(sc));
  const float d_m = MulRn(LoadHalf(blk + 2), static_cast<float>(m));
  uint8_t q[8];
  if (aligned) {  // blocks are 144 = 9 * 16 bytes, so qs + 8k is 8-byte aligned here
    const uint2 v = LoadAs<uint2>(qs);
    PI_UNROLL
    for (int k = 0; k < 4; ++k) {
      q[k] = static_cast<uint8_t>(v.x >> (8 * k));
      q[k + 4] = static_cast<uint8_t>(v.y >> (8 * k));
    }
  } else {
    Load8(qs, q);
  }
  PI_UNROLL
  for (int k = 0; k < 8; ++k) {
    w[k] = SubRn(MulRn(d_sc, static_cast<float>((q[k] >> shift) & 0xf)), d_m);
  }
  return kGroup;
}

// Q6_K: 210-byte blocks of 256: u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d. Half h (< 2) of
// 128 weights uses ql[64h ..] and qh[32h ..]; its quarter u (< 4) of 32 weights takes, for l < 32,
// the low (u < 2) or high (u >= 2) nibble of ql[64h + 32 * (u % 2) + l] and bits 2u, 2u+1 of
// qh[32h + l] as its top two bits; q = that - 32; w = (d * scales[s]) * q with s = weight / 16.
PI_HD int DecodeQ6_K(const uint8_t* row, int64_t g, float w[8]) {
  const uint8_t* blk = row + 210 * (g / 32);
  const int gi = static_cast<int>(g % 32);
  const int h = gi / 16;
  const int o = (gi % 16) * kGroup;  // offset in the half: 0 .. 120
  const int u = o / 32;
  const int l0 = o % 32;
  const int s = 8 * h + 2 * u + l0 / 16;
  const float ds =
      MulRn(LoadHalf(blk + 208), static_cast<float>(static_cast<int8_t>(blk[192 + s])));
  uint8_t ql[8], qh[8];
  Load8(blk + 64 * h + 32 * (u & 1) + l0, ql);
  Load8(blk + 128 + 32 * h + l0, qh);
  const int lshift = (u >> 1) * 4, hshift = 2 * u;
  PI_UNROLL
  for (int k = 0; k < 8; ++k) {
    const int q = (((ql[k] >> lshift) & 0xf) | (((qh[k] >> hshift) & 3) << 4)) - 32;
    w[k] = MulRn(ds, static_cast<float>(q));
  }
  return kGroup;
}

template <TensorType T>
PI_HD int DecodeGroup(const uint8_t* row, int64_t g, int64_t cols, bool aligned, float w[8]) {
  if constexpr (T == TensorType::kF32) {
    return DecodeF32(row, g, cols, aligned, w);
  } else if constexpr (T == TensorType::kF16) {
    return Decode16(row, g, cols, aligned, false, w);
  } else if constexpr (T == TensorType::kBF16) {
    return Decode16(row, g, cols, aligned, true, w);
  } else if constexpr (T == TensorType::kQ8_0) {
    return DecodeQ8_0(row, g, w);
  } else if constexpr (T == TensorType::kQ4_0) {
    return DecodeQ4_0(row, g, w);
  } else if constexpr (T == TensorType::kQ4_K) {
    return DecodeQ4_K(row, g, aligned, w);
  } else {
    static_assert(T == TensorType::kQ6_K, "not a device type");
    return DecodeQ6_K(row, g, w);
  }
}

// Rounds a decoded group to F16 and stores its n_valid values at o; `vec`: o is 16-byte aligned
// (then a full group goes out as one 16-byte store).
PI_HD void StoreGroupHalf(uint16_t* o, const float w[8], int n_valid, bool vec) {
  uint16_t h[kGroup];
  PI_UNROLL
  for (int k = 0; k < kGroup; ++k) h[k] = FloatToHalfBits(w[k]);
  if (n_valid == kGroup && vec) {
    uint4 v;
    v.x = h[0] | (static_cast<uint32_t>(h[1]) << 16);
    v.y = h[2] | (static_cast<uint32_t>(h[3]) << 16);
    v.z = h[4] | (static_cast<uint32_t>(h[5]) << 16);
    v.w = h[6] | (static_cast<uint32_t>(h[7]) << 16);
    StoreAs<uint4>(o, v);
  } else {
    for (int k = 0; k < n_valid; ++k) o[k] = h[k];
  }
}

// --- Mat-vec units ------------------------------------------------------------------------------
// On its fast path (16-byte aligned weight rows and activation rows) the mat-vec kernel walks a
// row in units: the weights one lane decodes from one set of loads. A unit's weights lie in kRuns
// runs of kRunLen consecutive columns (run r starts at column RunCol(u, r)); Load fetches unit u
// of a row and Decode turns what it fetched into the weights, run after run.

// Every type but Q4_K: unit u is group u (8 weights, decoded by the group decoders above).
template <TensorType T>
struct MatVecUnit {
  static constexpr int kRuns = 1, kRunLen = kGroup;
  struct Raw {
    float w[kGroup];
  };
  static PI_HD Raw Load(const uint8_t* row, int64_t u) {
    Raw r;
    if constexpr (T == TensorType::kF32) {
      DecodeF32Full(row + 4 * kGroup * u, r.w);
    } else if constexpr (T == TensorType::kF16 || T == TensorType::kBF16) {
      Decode16Full(row + 2 * kGroup * u, T == TensorType::kBF16, r.w);
    } else if constexpr (T == TensorType::kQ8_0) {
      DecodeQ8_0(row, u, r.w);
    } else if constexpr (T == TensorType::kQ4_0) {
      DecodeQ4_0(row, u, r.w);
    } else {
      static_assert(T == TensorType::kQ6_K, "not a device type");
      DecodeQ6_K(row, u, r.w);
    }
    return r;
  }
  static PI_HD void Decode(const Raw& r, float w[kGroup]) {
    PI_UNROLL
    for (int k = 0; k < kGroup; ++k) w[k] = r.w[k];
  }
  static PI_HD int64_t RunCol(int64_t u, int /*run*/) { return kGroup * u; }
};

// The float value of the low 4 bits of v. 2^23 + q has q in its low mantissa bits and subtracting
// 2^23 is exact, so this equals static_cast<float>(v & 15) while avoiding the int-to-float
// conversion instruction, whose throughput on recent GPUs is a fraction of that of float adds.
PI_HD float Nibble(uint32_t v) {
  const uint32_t bits = 0x4B000000u | (v & 0xfu);
#if defined(__CUDA_ARCH__)
  const float f = __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof(f));
#endif
  return SubRn(f, 8388608.0f);
}

// Q4_K by 32 weights, so that a lane reads 16 bytes of quants at once. Unit u is the bytes
// qs[16j .. 16j + 16) of block u / 8 (j = u % 8, c = j / 2, h = j % 2): their low nibbles are
// weights 64c + 16h + l (l < 16) of sub-block 2c, their high nibbles weights 64c + 32 + 16h + l of
// sub-block 2c + 1. The lane also loads the block's first 16 bytes (d, dmin, the 12 scale bytes):
// two 16-byte loads per 32 weights (blocks are 144 = 9 * 16 bytes, so both are aligned).
template <>
struct MatVecUnit<TensorType::kQ4_K> {
  static constexpr int kRuns = 2, kRunLen = 16;
  struct Raw {
    uint4 head, qs;
    int j;
  };
  static PI_HD Raw Load(const uint8_t* row, int64_t u) {
    const uint8_t* blk = row + 144 * (u / 8);
    const int j = static_cast<int>(u % 8);
    return {LoadAs<uint4>(blk), LoadAs<uint4>(blk + 16 + 16 * j), j};
  }
  static PI_HD void Decode(const Raw& r, float w[32]) {
    const float d = HalfBitsToFloat(r.head.x), dmin = HalfBitsToFloat(r.head.x >> 16);
    // Scale and min of sub-blocks 2c and 2c + 1 (ScaleMinK4 of formats.h): scale byte i is byte
    // i % 4 of head.y (i < 4), head.z (i < 8) or head.w.
    float d_sc[2], d_m[2];
    PI_UNROLL
    for (int s = 0; s < 2; ++s) {
      const int sub = 2 * (r.j / 2) + s;
      const int shift = 8 * (sub & 3);
      const uint32_t b0 = (r.head.y >> shift) & 0xffu;  // scales[sub & 3]
      const uint32_t b1 = (r.head.z >> shift) & 0xffu;  // scales[4 + (sub & 3)]
      const uint32_t b2 = (r.head.w >> shift) & 0xffu;  // scales[8 + (sub & 3)]
      const uint32_t sc = sub < 4 ? (b0 & 63u) : ((b2 & 0xfu) | ((b0 >> 6) << 4));
      const uint32_t m = sub < 4 ? (b1 & 63u) : ((b2 >> 4) | ((b1 >> 6) << 4));
      d_sc[s] = MulRn(d, static_cast<float>(sc));
      d_m[s] = MulRn(dmin, static_cast<float>(m));
    }
    const uint32_t words[4] = {r.qs.x, r.qs.y, r.qs.z, r.qs.w};
    PI_UNROLL
    for (int l = 0; l < 16; ++l) {
      const uint32_t byte = words[l / 4] >> (8 * (l % 4));
      w[l] = SubRn(MulRn(d_sc[0], Nibble(byte)), d_m[0]);
      w[16 + l] = SubRn(MulRn(d_sc[1], Nibble(byte >> 4)), d_m[1]);
    }
  }
  static PI_HD int64_t RunCol(int64_t u, int run) {
    const int j = static_cast<int>(u % 8);
    return 256 * (u / 8) + 64 * (j / 2) + 16 * (j % 2) + 32 * run;
  }
};

// Units a lane loads before it uses any of them, so that a warp has kMatVecUnroll * 32 units of
// loads in flight at once (F16: 2 KiB; Q4_K: 16 blocks, 2304 bytes).
constexpr int kMatVecUnroll = 4;

// Adds unit u's products to acc[t] for the n_tokens activation rows x + t * x_stride (16-byte
// aligned rows: x is read in float4).
template <typename Unit>
PI_HD void AccumulateUnit(const typename Unit::Raw& raw, int64_t u, const float* x,
                          int64_t x_stride, int n_tokens, float acc[kMaxTokens]) {
  float w[Unit::kRuns * Unit::kRunLen];
  Unit::Decode(raw, w);
  PI_UNROLL
  for (int t = 0; t < kMaxTokens; ++t) {
    if (t >= n_tokens) break;
    float s = 0.0f;
    PI_UNROLL
    for (int r = 0; r < Unit::kRuns; ++r) {
      const float* xr = x + t * x_stride + Unit::RunCol(u, r);
      PI_UNROLL
      for (int k = 0; k < Unit::kRunLen; k += 4) {
        const float4 v = LoadAs<float4>(xr + k);
        const float* wk = w + r * Unit::kRunLen + k;
        s += wk[0] * v.x + wk[1] * v.y + wk[2] * v.z + wk[3] * v.w;
      }
    }
    acc[t] += s;
  }
}

// Lane `lane` of the warp that computes one output row: acc[t] += the lane's share of
// sum_c W[c] * x[t * x_stride + c] (W: the row's `cols` weights at wr). With w_aligned and
// x_aligned (16-byte aligned row and activation rows) whole units take the fast path above, lane
// i taking units i, i + 32, ...; whatever is left (all of the row otherwise; the partial last
// group of a plain type) goes group by group, lane i taking groups i, i + 32, ... of it.
template <TensorType T>
PI_HD void MatVecLane(const uint8_t* __restrict__ wr, int64_t cols, bool w_aligned,
                      const float* __restrict__ x, int64_t x_stride, bool x_aligned, int n_tokens,
                      int lane, float acc[kMaxTokens]) {
  using Unit = MatVecUnit<T>;
  constexpr int kUnitWeights = Unit::kRuns * Unit::kRunLen;
  int64_t g0 = 0;  // first group of the group-by-group part
  if (w_aligned && x_aligned) {
    const int64_t n_units = cols / kUnitWeights;
    int64_t u = lane;
    for (; u + 32 * (kMatVecUnroll - 1) < n_units; u += 32 * kMatVecUnroll) {
      typename Unit::Raw raw[kMatVecUnroll];
      PI_UNROLL
      for (int k = 0; k < kMatVecUnroll; ++k) raw[k] = Unit::Load(wr, u + 32 * k);
      PI_UNROLL
      for (int k = 0; k < kMatVecUnroll; ++k) {
        AccumulateUnit<Unit>(raw[k], u + 32 * k, x, x_stride, n_tokens, acc);
      }
    }
    for (; u < n_units; u += 32)
      AccumulateUnit<Unit>(Unit::Load(wr, u), u, x, x_stride, n_tokens, acc);
    g0 = n_units * (kUnitWeights / kGroup);
  }
  const int64_t n_groups = (cols + kGroup - 1) / kGroup;
  for (int64_t g = g0 + lane; g < n_groups; g += 32) {
    float wv[kGroup];
    const int n_valid = DecodeGroup<T>(wr, g, cols, w_aligned, wv);
    PI_UNROLL
    for (int t = 0; t < kMaxTokens; ++t) {
      if (t >= n_tokens) break;
      const float* xt = x + t * x_stride + kGroup * g;
      float xv[kGroup];
      if (n_valid == kGroup && x_aligned) {
        const float4 a = LoadAs<float4>(xt), b = LoadAs<float4>(xt + 4);
        xv[0] = a.x, xv[1] = a.y, xv[2] = a.z, xv[3] = a.w;
        xv[4] = b.x, xv[5] = b.y, xv[6] = b.z, xv[7] = b.w;
      } else {
        PI_UNROLL
        for (int k = 0; k < kGroup; ++k) xv[k] = k < n_valid ? xt[k] : 0.0f;
      }
      float s = 0.0f;
      PI_UNROLL
      for (int k = 0; k < kGroup; ++k) s += wv[k] * xv[k];
      acc[t] += s;
    }
  }
}

}  // namespace pipeinfer::cuda::internal
