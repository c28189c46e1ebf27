// AVX2+FMA+F16C row kernels of MatMul (this file is compiled with -mavx2 -mfma -mf16c).
//
// The block decoders (decode_avx2.h) hand each group of 8 decoded weights to a consumer. Two
// consumers:
//  * up to 8 tokens (decode and small speculative runs): the consumer multiplies w straight into
//    per-token accumulator registers, so each block is decoded once, in registers, for all of them;
//  * more tokens: 256 weights are decoded once into a small buffer in L1, which is then applied to
//    the tokens 8 at a time, with the accumulators parked in memory between buffers.
// Activations are repacked once per call (simd.h) so that all their loads are aligned, sequential
// and at constant offsets, and so that padded columns need no masking.
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

constexpr int kChainsMaxNt = 4;  // 2 chains per token up to 4 tokens (6 made no difference)
constexpr int kBufWeights = 256;
constexpr int kTokenGroup = 64;  // tokens whose accumulators BufferedRows parks at once

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

// Accumulators per token in FusedRows: enough independent FMA chains to cover the FMA latency
// when few tokens share a decoded vector, without running out of the 16 vector registers.
constexpr int ChainsPerToken(int nt) { return nt <= 2 ? 4 : (nt <= kChainsMaxNt ? 2 : 1); }

// One group of NT (<= 8) tokens, packed: every block is decoded once, in registers, and
// multiplied into NT * ChainsPerToken(NT) accumulators. All activation loads use constant offsets
// from one pointer.
template <class D, int NT>
void FusedRows(const Matrix& w, const float* xp, float* y, int64_t ys, int64_t r0, int64_t r1) {
  constexpr int A = ChainsPerToken(NT);
  constexpr int64_t kXPerBlock = D::kBlock * NT;  // packed floats per block of weights
  const int64_t n_blocks = w.cols / D::kBlock;
  const int64_t tail = w.cols - n_blocks * D::kBlock;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    __m256 acc[NT * A];
#pragma GCC unroll 16
    for (int i = 0; i < NT * A; ++i) acc[i] = _mm256_setzero_ps();
    auto fma = [&](const float* xb) {
      return [&acc, xb](int k, __m256 wv) {
#pragma GCC unroll 16
        for (int t = 0; t < NT; ++t) {
          __m256& a = acc[t * A + k % A];
          a = _mm256_fmadd_ps(wv, _mm256_load_ps(xb + (k * NT + t) * 8), a);
        }
      };
    };
    const float* xb = xp;
    for (int64_t blk = 0; blk < n_blocks; ++blk, xb += kXPerBlock) {
      D::Decode(row + blk * D::kBytes, fma(xb));
    }
    if (tail > 0) {
      alignas(32) float tb[32];
      DecodeTail(w.type, row + n_blocks * D::kBytes, tail, tb);
      DecF32::Decode(reinterpret_cast<const uint8_t*>(tb), fma(xb));
    }
#pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) {
      __m256 s = acc[t * A];
      if (A == 2) s = _mm256_add_ps(s, acc[t * A + 1]);
      if (A == 4) {
        s = _mm256_add_ps(_mm256_add_ps(s, acc[t * A + 2]),
                          _mm256_add_ps(acc[t * A + 1], acc[t * A + 3]));
      }
      y[t * ys + r] = HorizontalSum(s);
    }
  }
}

// Applies n8 groups of 8 buffered weights to the G tokens of a packed group, starting at x.
template <int G>
void ApplyBuffer(const float* wbuf, int64_t n8, const float* x, __m256* acc) {
  __m256 a[G];
#pragma GCC unroll 16
  for (int g = 0; g < G; ++g) a[g] = acc[g];
  for (int64_t i = 0; i < n8; ++i, x += 8 * G) {
    const __m256 wv = _mm256_load_ps(wbuf + 8 * i);
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) a[g] = _mm256_fmadd_ps(wv, _mm256_load_ps(x + 8 * g), a[g]);
  }
#pragma GCC unroll 16
  for (int g = 0; g < G; ++g) acc[g] = a[g];
}

// wbuf holds the weights of columns [c0, c0 + 8 * n8); apply them to tokens [t0, t0 + nt) (t0 a
// multiple of 8), whose packed groups start at xp.
void ApplyToTokens(const float* wbuf, int64_t n8, const float* xp, int64_t padded_cols, int64_t c0,
                   int64_t t0, int64_t nt, __m256* acc) {
  for (int64_t t = 0; t < nt; t += kPackTokens) {
    const int64_t g = Min64(kPackTokens, nt - t);
    const float* x = xp + (t0 + t) * padded_cols + c0 * g;
    constexpr void (*kApply[kPackTokens + 1])(const float*, int64_t, const float*, __m256*) = {
        nullptr,        ApplyBuffer<1>, ApplyBuffer<2>, ApplyBuffer<3>, ApplyBuffer<4>,
        ApplyBuffer<5>, ApplyBuffer<6>, ApplyBuffer<7>, ApplyBuffer<8>};
    kApply[g](wbuf, n8, x, acc + t);
  }
}

// Any number of tokens: per row, decode 256 weights once into wbuf and apply them to every token.
template <class D>
void BufferedRows(const Matrix& w, const float* xp, int64_t n_tokens, float* y, int64_t ys,
                  int64_t r0, int64_t r1) {
  constexpr int kGroupBlocks = kBufWeights / D::kBlock;
  const int64_t n_blocks = w.cols / D::kBlock;
  const int64_t tail = w.cols - n_blocks * D::kBlock;
  const int64_t padded_cols = PadCols(w.cols);
  alignas(32) float wbuf[kBufWeights];
  alignas(32) __m256 acc[kTokenGroup];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kTokenGroup) {
      const int64_t nt = Min64(kTokenGroup, n_tokens - t0);
      for (int64_t t = 0; t < nt; ++t) acc[t] = _mm256_setzero_ps();
      for (int64_t b0 = 0; b0 < n_blocks; b0 += kGroupBlocks) {
        const int64_t nb = Min64(kGroupBlocks, n_blocks - b0);
        for (int64_t i = 0; i < nb; ++i) {
          float* out = wbuf + i * D::kBlock;
          D::Decode(row + (b0 + i) * D::kBytes,
                    [out](int k, __m256 wv) { _mm256_store_ps(out + 8 * k, wv); });
        }
        ApplyToTokens(wbuf, nb * D::kBlock / 8, xp, padded_cols, b0 * D::kBlock, t0, nt, acc);
      }
      if (tail > 0) {
        DecodeTail(w.type, row + n_blocks * D::kBytes, tail, wbuf);
        ApplyToTokens(wbuf, 4, xp, padded_cols, n_blocks * D::kBlock, t0, nt, acc);
      }
      for (int64_t t = 0; t < nt; ++t) y[(t0 + t) * ys + r] = HorizontalSum(acc[t]);
    }
  }
}

template <class D>
void Rows(const Matrix& w, const float* xp, int64_t n, float* y, int64_t ys, int64_t r0,
          int64_t r1) {
  constexpr void (*kFused[kPackTokens + 1])(const Matrix&, const float*, float*, int64_t, int64_t,
                                            int64_t) = {
      nullptr,         FusedRows<D, 1>, FusedRows<D, 2>, FusedRows<D, 3>, FusedRows<D, 4>,
      FusedRows<D, 5>, FusedRows<D, 6>, FusedRows<D, 7>, FusedRows<D, 8>};
  if (n <= kPackTokens) return kFused[n](w, xp, y, ys, r0, r1);
  BufferedRows<D>(w, xp, n, y, ys, r0, r1);
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
