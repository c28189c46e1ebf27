// Device side of the matrix products: decoding weights in their GGUF block layout, the mat-vec
// kernel for a few tokens, and the conversions to F16 that feed cuBLAS for many tokens.
//
// Decoding works on groups of 8 consecutive weights of a row (group g = weights 8g .. 8g+7). Every
// block format of the device types holds a whole number of groups (blocks of 32 or 256 weights),
// so a group never straddles two blocks; plain types (F32/F16/BF16) may end in a partial group
// when cols is not a multiple of 8. The decoders compute each weight with the same float
// operations, in the same order, as the CPU decoders in libs/kernels/dequant.cc (see formats.h for
// the layouts). The *_rn intrinsics keep nvcc from fusing a multiply and an add into one FMA,
// which would round differently from the CPU, so the GPU decodes bit-identical weights.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/cuda_hd.cuh"
#include "cuda/cuda_launch.h"

namespace pipeinfer::cuda::internal {
namespace {

using gguf::TensorType;

constexpr int kGroup = 8;        // weights decoded together by one thread
constexpr int kMatVecWarps = 4;  // rows (one per warp) per block of the mat-vec kernel
constexpr int kMaxTokens = 8;    // = kMatVecMaxTokens of cuda_ops.h
constexpr int kElementwiseThreads = 256;

// The decoders below are compiled for the host too (DecodeRowOnHost, see cuda_hd.cuh), so that
// their indexing is checked against the CPU decoders by a test that needs no device.

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

PI_HD int DecodeF32(const uint8_t* row, int64_t g, int64_t cols, bool aligned, float w[8]) {
  const uint8_t* p = row + 4 * kGroup * g;
  const int64_t left = cols - kGroup * g;
  if (left >= kGroup && aligned) {
    const float4 a = LoadAs<float4>(p), b = LoadAs<float4>(p + 16);
    w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w;
    w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
    return kGroup;
  }
  const int n = left < kGroup ? static_cast<int>(left) : kGroup;
  PI_UNROLL
  for (int k = 0; k < kGroup; ++k) w[k] = k < n ? LoadAs<float>(p + 4 * k) : 0.0f;
  return n;
}

// F16 (bf16 = false) or BF16 (bf16 = true) elements.
PI_HD int Decode16(const uint8_t* row, int64_t g, int64_t cols, bool aligned, bool bf16,
                   float w[8]) {
  const uint8_t* p = row + 2 * kGroup * g;
  const int64_t left = cols - kGroup * g;
  if (left >= kGroup && aligned) {
    const uint4 v = LoadAs<uint4>(p);
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
    PI_UNROLL
    for (int k = 0; k < 4; ++k) {
      w[2 * k] = bf16 ? Bf16BitsToFloat(words[k]) : HalfBitsToFloat(words[k]);
      w[2 * k + 1] = bf16 ? Bf16BitsToFloat(words[k] >> 16) : HalfBitsToFloat(words[k] >> 16);
    }
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

// One warp per output row: lane i decodes groups i, i + 32, ... of the row once and applies each
// to all n_tokens activation rows; the per-token partial sums are then added across the warp.
template <TensorType T>
__global__ void __launch_bounds__(kMatVecWarps * 32)
    MatVecKernel(const uint8_t* __restrict__ w, int64_t rows, int64_t cols, size_t row_bytes,
                 bool w_aligned, const float* __restrict__ x, int64_t x_stride, bool x_aligned,
                 int n_tokens, float* __restrict__ y, int64_t y_stride) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kMatVecWarps + (threadIdx.x >> 5);
  if (row >= rows) return;  // the whole warp leaves together
  const uint8_t* wr = w + row * row_bytes;
  const int64_t n_groups = (cols + kGroup - 1) / kGroup;
  float acc[kMaxTokens];
  PI_UNROLL
  for (int t = 0; t < kMaxTokens; ++t) acc[t] = 0.0f;

  for (int64_t g = lane; g < n_groups; g += 32) {
    float wv[kGroup];
    const int n_valid = DecodeGroup<T>(wr, g, cols, w_aligned, wv);
    PI_UNROLL
    for (int t = 0; t < kMaxTokens; ++t) {
      if (t >= n_tokens) break;
      const float* xt = x + t * x_stride + kGroup * g;
      float xv[kGroup];
      if (n_valid == kGroup && x_aligned) {
        const float4 a = reinterpret_cast<const float4*>(xt)[0];
        const float4 b = reinterpret_cast<const float4*>(xt)[1];
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
  PI_UNROLL
  for (int t = 0; t < kMaxTokens; ++t) {
    float v = acc[t];
    PI_UNROLL
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0 && t < n_tokens) y[t * y_stride + row] = v;
  }
}

// One thread per group of 8 weights, grid-stride; rows are written packed (ld = cols).
template <TensorType T>
__global__ void DequantToHalfKernel(const uint8_t* __restrict__ w, int64_t rows, int64_t cols,
                                    size_t row_bytes, bool w_aligned, uint16_t* __restrict__ out) {
  const int64_t n_groups = (cols + kGroup - 1) / kGroup;
  const int64_t total = rows * n_groups;
  const bool out_vec = cols % kGroup == 0;  // each group then starts 16-byte aligned
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / n_groups, g = i % n_groups;
    float wv[kGroup];
    const int n_valid = DecodeGroup<T>(w + r * row_bytes, g, cols, w_aligned, wv);
    StoreGroupHalf(out + r * cols + kGroup * g, wv, n_valid, out_vec);
  }
}

__global__ void FloatToHalfRowsKernel(const float* __restrict__ x, int64_t x_stride, int64_t rows,
                                      int64_t cols, uint16_t* __restrict__ out) {
  const int64_t total = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    out[i] = __half_as_ushort(__float2half_rn(x[r * x_stride + c]));
  }
}

// Blocks for a grid-stride loop over `total` items (capped; the loop covers the rest).
unsigned GridFor(int64_t total) {
  const int64_t blocks = (total + kElementwiseThreads - 1) / kElementwiseThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > (1 << 20) ? (1 << 20) : blocks));
}

bool Aligned16(const void* p, size_t row_bytes) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && row_bytes % 16 == 0;
}

template <TensorType T>
cudaError_t MatVecAs(const uint8_t* w, int64_t rows, int64_t cols, size_t row_bytes, const float* x,
                     int64_t x_stride, int n_tokens, float* y, int64_t y_stride,
                     cudaStream_t stream) {
  const bool x_aligned =
      reinterpret_cast<uintptr_t>(x) % 16 == 0 && (n_tokens == 1 || x_stride % 4 == 0);
  const auto blocks = static_cast<unsigned>((rows + kMatVecWarps - 1) / kMatVecWarps);
  MatVecKernel<T><<<blocks, kMatVecWarps * 32, 0, stream>>>(w, rows, cols, row_bytes,
                                                            Aligned16(w, row_bytes), x, x_stride,
                                                            x_aligned, n_tokens, y, y_stride);
  return cudaGetLastError();
}

template <TensorType T>
cudaError_t DequantAs(const uint8_t* w, int64_t rows, int64_t cols, size_t row_bytes, uint16_t* out,
                      cudaStream_t stream) {
  const int64_t groups = rows * ((cols + kGroup - 1) / kGroup);
  DequantToHalfKernel<T><<<GridFor(groups), kElementwiseThreads, 0, stream>>>(
      w, rows, cols, row_bytes, Aligned16(w, row_bytes), out);
  return cudaGetLastError();
}

}  // namespace

namespace {

template <TensorType T>
void DecodeRowAs(const uint8_t* row, int64_t cols, bool aligned, float* out, uint16_t* out_half) {
  const int64_t n_groups = (cols + kGroup - 1) / kGroup;
  for (int64_t g = 0; g < n_groups; ++g) {
    float w[kGroup];
    const int n = DecodeGroup<T>(row, g, cols, aligned, w);
    for (int k = 0; k < n; ++k) out[kGroup * g + k] = w[k];
    StoreGroupHalf(out_half + kGroup * g, w, n, aligned && cols % kGroup == 0);
  }
}

}  // namespace

bool DecodeRowOnHost(TensorType type, const uint8_t* row, int64_t cols, bool aligned, float* out,
                     uint16_t* out_half) {
  switch (type) {
    case TensorType::kF32:
      DecodeRowAs<TensorType::kF32>(row, cols, aligned, out, out_half);
      return true;
    case TensorType::kF16:
      DecodeRowAs<TensorType::kF16>(row, cols, aligned, out, out_half);
      return true;
    case TensorType::kBF16:
      DecodeRowAs<TensorType::kBF16>(row, cols, aligned, out, out_half);
      return true;
    case TensorType::kQ8_0:
      DecodeRowAs<TensorType::kQ8_0>(row, cols, aligned, out, out_half);
      return true;
    case TensorType::kQ4_0:
      DecodeRowAs<TensorType::kQ4_0>(row, cols, aligned, out, out_half);
      return true;
    case TensorType::kQ4_K:
      DecodeRowAs<TensorType::kQ4_K>(row, cols, aligned, out, out_half);
      return true;
    case TensorType::kQ6_K:
      DecodeRowAs<TensorType::kQ6_K>(row, cols, aligned, out, out_half);
      return true;
    default:
      return false;
  }
}

bool DeviceDecodes(TensorType type) { return DeviceBlockSize(type) > 0; }

int DeviceBlockSize(TensorType type) {
  switch (type) {
    case TensorType::kF32:
    case TensorType::kF16:
    case TensorType::kBF16:
      return 1;
    case TensorType::kQ8_0:
    case TensorType::kQ4_0:
      return 32;
    case TensorType::kQ4_K:
    case TensorType::kQ6_K:
      return 256;
    default:
      return 0;
  }
}

int DeviceBlockBytes(TensorType type) {
  switch (type) {
    case TensorType::kF32:
      return 4;
    case TensorType::kF16:
    case TensorType::kBF16:
      return 2;
    case TensorType::kQ8_0:
      return 34;
    case TensorType::kQ4_0:
      return 18;
    case TensorType::kQ4_K:
      return 144;
    case TensorType::kQ6_K:
      return 210;
    default:
      return 0;
  }
}

cudaError_t LaunchMatVec(TensorType type, const uint8_t* w, int64_t rows, int64_t cols,
                         size_t row_bytes, const float* x, int64_t x_stride, int n_tokens, float* y,
                         int64_t y_stride, cudaStream_t stream) {
  if (n_tokens < 1 || n_tokens > kMaxTokens) return cudaErrorInvalidValue;
  switch (type) {
    case TensorType::kF32:
      return MatVecAs<TensorType::kF32>(w, rows, cols, row_bytes, x, x_stride, n_tokens, y,
                                        y_stride, stream);
    case TensorType::kF16:
      return MatVecAs<TensorType::kF16>(w, rows, cols, row_bytes, x, x_stride, n_tokens, y,
                                        y_stride, stream);
    case TensorType::kBF16:
      return MatVecAs<TensorType::kBF16>(w, rows, cols, row_bytes, x, x_stride, n_tokens, y,
                                         y_stride, stream);
    case TensorType::kQ8_0:
      return MatVecAs<TensorType::kQ8_0>(w, rows, cols, row_bytes, x, x_stride, n_tokens, y,
                                         y_stride, stream);
    case TensorType::kQ4_0:
      return MatVecAs<TensorType::kQ4_0>(w, rows, cols, row_bytes, x, x_stride, n_tokens, y,
                                         y_stride, stream);
    case TensorType::kQ4_K:
      return MatVecAs<TensorType::kQ4_K>(w, rows, cols, row_bytes, x, x_stride, n_tokens, y,
                                         y_stride, stream);
    case TensorType::kQ6_K:
      return MatVecAs<TensorType::kQ6_K>(w, rows, cols, row_bytes, x, x_stride, n_tokens, y,
                                         y_stride, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t LaunchDequantToHalf(TensorType type, const uint8_t* w, int64_t rows, int64_t cols,
                                size_t row_bytes, uint16_t* out, cudaStream_t stream) {
  switch (type) {
    case TensorType::kF32:
      return DequantAs<TensorType::kF32>(w, rows, cols, row_bytes, out, stream);
    case TensorType::kF16:
      return DequantAs<TensorType::kF16>(w, rows, cols, row_bytes, out, stream);
    case TensorType::kBF16:
      return DequantAs<TensorType::kBF16>(w, rows, cols, row_bytes, out, stream);
    case TensorType::kQ8_0:
      return DequantAs<TensorType::kQ8_0>(w, rows, cols, row_bytes, out, stream);
    case TensorType::kQ4_0:
      return DequantAs<TensorType::kQ4_0>(w, rows, cols, row_bytes, out, stream);
    case TensorType::kQ4_K:
      return DequantAs<TensorType::kQ4_K>(w, rows, cols, row_bytes, out, stream);
    case TensorType::kQ6_K:
      return DequantAs<TensorType::kQ6_K>(w, rows, cols, row_bytes, out, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t LaunchFloatToHalfRows(const float* x, int64_t x_stride, int64_t rows, int64_t cols,
                                  uint16_t* out, cudaStream_t stream) {
  FloatToHalfRowsKernel<<<GridFor(rows * cols), kElementwiseThreads, 0, stream>>>(x, x_stride, rows,
                                                                                  cols, out);
  return cudaGetLastError();
}

}  // namespace pipeinfer::cuda::internal
