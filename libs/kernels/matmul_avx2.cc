// AVX2+FMA+F16C row kernels of MatMul (this file is compiled with -mavx2 -mfma -mf16c).
//
// The block decoders (decode_avx2.h) hand each group of 8 decoded weights to a consumer, which
// collects 32 weights and multiplies them straight into the accumulator registers of a group of up
// to 8 tokens; larger batches go through the same kernel one group of 8 tokens at a time. Every
// token is summed in the same order whatever the batch (see ApplyChunk): batched runs are
// bit-identical to single-token runs. Activations are repacked once per call (simd.h) so that all
// their loads are aligned, sequential and at constant offsets, and so that padded columns need no
// masking.
//
// Nothing here may use std:: templates or other inline functions shared with the portable files
// (the linker could merge an AVX2-compiled copy into them); helpers have internal linkage.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/decode_avx2.h"
#include "kernels/simd.h"

namespace pipeinfer::kernels::avx2 {
namespace {

using gguf::TensorType;

inline int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ----- row kernels ----------------------------------------------------------------------------

// Rows per tile when a batch takes several token groups: the tile's weights (at most ~16 KiB)
// stay in L1 while every group decodes them again.
constexpr int64_t kTileBytes = 16 * 1024;

inline int64_t PadCols(int64_t cols) { return (cols + kPackCols - 1) / kPackCols * kPackCols; }

// Plain types only: the last cols % 32 elements of a row, as 32 floats zero-padded (so that they
// can be decoded as one more F32 block against the zero-padded packed activations).
void DecodeTail(TensorType type, const uint8_t* p, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    if (type == TensorType::kF32) {
      std::memcpy(&out[i], p + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      const uint32_t bf = static_cast<uint32_t>(h) << 16;
      float v;
      std::memcpy(&v, &bf, 4);
      out[i] = type == TensorType::kF16 ? _cvtsh_ss(h) : v;
    }
  }
  for (int64_t i = n; i < 32; ++i) out[i] = 0.0f;
}

// The one summation order of every token (whatever the batch size, the token's place in it, or
// the rows a thread gets), so that a batched run gives the bits of single-token runs:
//
//   for each chunk j of 32 columns (zero-padded), in order:
//     p   = w[j][0:8] * x[j][0:8]                      (8 lanes)
//     p   = fma(w[j][8:16],  x[j][8:16],  p)
//     p   = fma(w[j][16:24], x[j][16:24], p)
//     p   = fma(w[j][24:32], x[j][24:32], p)
//     acc = acc + p
//   y = HorizontalSum(acc)
//
// Why this order: a fixed number of accumulator chains per token would need 4 registers per
// token to keep a single token's FMAs in flight (with fewer, one token waits on the FMA latency),
// and then only 3 tokens could share a decoded block. Here the only dependency carried from chunk
// to chunk is one addition per four FMAs (a single token runs at least as fast as with four
// chains), and a token needs one accumulator register: 8 tokens (8 accumulators + the chunk's 4
// weight vectors) fit the 16 ymm registers, so each block is decoded once, in registers, for up to
// 8 tokens. The price is that extra addition per chunk and token.
template <int NT>
PIPEINFER_AVX2_INLINE void ApplyChunk(const __m256 wk[4], const float* xq, __m256* acc) {
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) {
    __m256 p = _mm256_mul_ps(wk[0], _mm256_load_ps(xq + t * 8));
    p = _mm256_fmadd_ps(wk[1], _mm256_load_ps(xq + (NT + t) * 8), p);
    p = _mm256_fmadd_ps(wk[2], _mm256_load_ps(xq + (2 * NT + t) * 8), p);
    p = _mm256_fmadd_ps(wk[3], _mm256_load_ps(xq + (3 * NT + t) * 8), p);
    acc[t] = _mm256_add_ps(acc[t], p);
  }
}

// Rows [r0, r1) for one packed group of NT (<= 8) tokens at xp, results to y[t * ys + r]. The
// decoder's groups of 8 weights are collected four at a time (they come in order, see
// decode_avx2.h) and applied as one chunk; all activation loads use constant offsets.
template <class D, int NT>
void FusedRows(const Matrix& w, const float* xp, float* y, int64_t ys, int64_t r0, int64_t r1) {
  constexpr int64_t kXPerChunk = 32 * NT;  // packed floats per 32 columns
  constexpr int64_t kXPerBlock = D::kBlock * NT;
  const int64_t n_blocks = w.cols / D::kBlock;
  const int64_t tail = w.cols - n_blocks * D::kBlock;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    __m256 acc[NT];
#pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    __m256 wk[4];
    auto chunks = [&acc, &wk](const float* xb) {
      return [&acc, &wk, xb](int k, __m256 wv) PIPEINFER_AVX2_LAMBDA_INLINE {
        wk[k & 3] = wv;
        if ((k & 3) == 3) ApplyChunk<NT>(wk, xb + (k >> 2) * kXPerChunk, acc);
      };
    };
    const float* xb = xp;
    for (int64_t blk = 0; blk < n_blocks; ++blk, xb += kXPerBlock) {
      D::Decode(row + blk * D::kBytes, chunks(xb));
    }
    if (tail > 0) {
      alignas(32) float tb[32];
      DecodeTail(w.type, row + n_blocks * D::kBytes, tail, tb);
      DecF32::Decode(reinterpret_cast<const uint8_t*>(tb), chunks(xb));
    }
#pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) y[t * ys + r] = HorizontalSum(acc[t]);
  }
}

template <class D>
void Rows(const Matrix& w, const float* xp, int64_t n, float* y, int64_t ys, int64_t r0,
          int64_t r1) {
  using GroupFn = void (*)(const Matrix&, const float*, float*, int64_t, int64_t, int64_t);
  constexpr GroupFn kFused[kPackTokens + 1] = {nullptr,         FusedRows<D, 1>, FusedRows<D, 2>,
                                               FusedRows<D, 3>, FusedRows<D, 4>, FusedRows<D, 5>,
                                               FusedRows<D, 6>, FusedRows<D, 7>, FusedRows<D, 8>};
  if (n <= kPackTokens) return kFused[n](w, xp, y, ys, r0, r1);
  // More tokens: the same kernel per packed group of 8, over tiles of rows small enough to be
  // decoded again from L1 for each group (decoding is cheap next to 8 tokens' FMAs).
  const int64_t padded_cols = PadCols(w.cols);
  const int64_t row_bytes = static_cast<int64_t>(w.row_bytes);
  const int64_t tile = row_bytes >= kTileBytes ? 1 : kTileBytes / (row_bytes > 0 ? row_bytes : 1);
  for (int64_t rt = r0; rt < r1; rt += tile) {
    const int64_t rt_end = Min64(r1, rt + tile);
    for (int64_t t0 = 0; t0 < n; t0 += kPackTokens) {
      const int64_t g = Min64(kPackTokens, n - t0);
      kFused[g](w, xp + t0 * padded_cols, y + t0 * ys, ys, rt, rt_end);
    }
  }
}

}  // namespace

int64_t PackedActivationsSize(int64_t cols, int64_t n_tokens) { return n_tokens * PadCols(cols); }

void PackActivations(const float* x, int64_t x_stride, int64_t n_tokens, int64_t cols,
                     float* packed) {
  const int64_t padded_cols = PadCols(cols);
  for (int64_t t0 = 0; t0 < n_tokens; t0 += kPackTokens) {
    const int64_t g = Min64(kPackTokens, n_tokens - t0);
    float* out = packed + t0 * padded_cols;
    for (int64_t c = 0; c < padded_cols; c += 8) {
      for (int64_t t = 0; t < g; ++t, out += 8) {
        const float* src = x + (t0 + t) * x_stride + c;
        if (c + 8 <= cols) {
          _mm256_store_ps(out, _mm256_loadu_ps(src));
        } else {
          for (int64_t l = 0; l < 8; ++l) out[l] = c + l < cols ? src[l] : 0.0f;
        }
      }
    }
  }
}

bool MatMulRows(const Matrix& w, const float* packed, int64_t n_tokens, float* y, int64_t y_stride,
                int64_t row_begin, int64_t row_end) {
  using RowsFn = void (*)(const Matrix&, const float*, int64_t, float*, int64_t, int64_t, int64_t);
  RowsFn fn = nullptr;
  switch (w.type) {
    case TensorType::kF32:
      fn = Rows<DecF32>;
      break;
    case TensorType::kF16:
      fn = Rows<DecF16>;
      break;
    case TensorType::kBF16:
      fn = Rows<DecBF16>;
      break;
    case TensorType::kQ8_0:
      fn = Rows<DecQ8_0>;
      break;
    case TensorType::kQ4_0:
      fn = Rows<DecQ4_0>;
      break;
    case TensorType::kQ4_1:
      fn = Rows<DecQ4_1>;
      break;
    case TensorType::kQ5_0:
      fn = Rows<DecQ5_0>;
      break;
    case TensorType::kQ5_1:
      fn = Rows<DecQ5_1>;
      break;
    case TensorType::kQ2_K:
      fn = Rows<DecQ2_K>;
      break;
    case TensorType::kQ3_K:
      fn = Rows<DecQ3_K>;
      break;
    case TensorType::kQ4_K:
      fn = Rows<DecQ4_K>;
      break;
    case TensorType::kQ5_K:
      fn = Rows<DecQ5_K>;
      break;
    case TensorType::kQ6_K:
      fn = Rows<DecQ6_K>;
      break;
    default:
      return false;
  }
  fn(w, packed, n_tokens, y, y_stride, row_begin, row_end);
  return true;
}

}  // namespace pipeinfer::kernels::avx2
