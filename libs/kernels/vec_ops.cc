// Vector operations of the forward pass: portable versions and dispatch to the AVX2 ones.
#include <cmath>
#include <limits>

#include "kernels/half.h"
#include "kernels/kernels.h"
#include "kernels/simd.h"

#if PIPEINFER_KERNELS_X86
#define PIPEINFER_DISPATCH(call) \
  if (UsingSimd()) return avx2::call
#else
#define PIPEINFER_DISPATCH(call)
#endif

namespace pipeinfer::kernels {
namespace {

// Sums eight interleaved partial sums (like the lanes of a vector register) in a fixed tree.
float SumLanes(const float p[8]) {
  return ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]));
}

}  // namespace

namespace {

float DotF32Portable(const float* a, const float* b, int64_t n) {
  float p[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) p[l] += a[i + l] * b[i + l];
  }
  for (int l = 0; i < n; ++i, ++l) p[l] += a[i] * b[i];
  return SumLanes(p);
}

}  // namespace

float DotF32(const float* a, const float* b, int64_t n) {
  PIPEINFER_DISPATCH(DotF32(a, b, n));
  return DotF32Portable(a, b, n);
}

void DotF32Rows(const float* a, int64_t a_stride, int64_t rows, const float* b, int64_t n,
                float* out) {
  PIPEINFER_DISPATCH(DotF32Rows(a, a_stride, rows, b, n, out));
  for (int64_t r = 0; r < rows; ++r) out[r] = DotF32Portable(a + r * a_stride, b, n);
}

float DotF32F16(const float* a, const uint16_t* b, int64_t n) {
  PIPEINFER_DISPATCH(DotF32F16(a, b, n));
  float p[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) p[l] += a[i + l] * internal::HalfBitsToFloat(b[i + l]);
  }
  for (int l = 0; i < n; ++i, ++l) p[l] += a[i] * internal::HalfBitsToFloat(b[i]);
  return SumLanes(p);
}

void AxpyF32(float s, const float* x, float* y, int64_t n) {
  PIPEINFER_DISPATCH(AxpyF32(s, x, y, n));
  for (int64_t i = 0; i < n; ++i) y[i] += s * x[i];
}

void AxpyF32Rows(const float* s, const float* x, float* y, int64_t y_stride, int64_t rows,
                 int64_t n) {
  PIPEINFER_DISPATCH(AxpyF32Rows(s, x, y, y_stride, rows, n));
  for (int64_t r = 0; r < rows; ++r) {
    float* yr = y + r * y_stride;
    for (int64_t i = 0; i < n; ++i) yr[i] += s[r] * x[i];
  }
}

void AxpyF16(float s, const uint16_t* x, float* y, int64_t n) {
  PIPEINFER_DISPATCH(AxpyF16(s, x, y, n));
  for (int64_t i = 0; i < n; ++i) y[i] += s * internal::HalfBitsToFloat(x[i]);
}

namespace {

// Row j of an attention call as floats (converted into `row` when F16).
const float* CacheRow(const uint8_t* base, size_t offset, bool f16, int64_t n, float* row) {
  if (!f16) return reinterpret_cast<const float*>(base + offset);
  const uint16_t* h = reinterpret_cast<const uint16_t*>(base + offset);
  for (int64_t i = 0; i < n; ++i) row[i] = internal::HalfBitsToFloat(h[i]);
  return row;
}

}  // namespace

void AttentionScores(const float* a, int64_t a_stride, int64_t rows, const uint8_t* base,
                     const size_t* offsets, int64_t n_keys, bool f16, int64_t n, float scale,
                     float* row, float* out, int64_t out_stride) {
  PIPEINFER_DISPATCH(AttentionScores(a, a_stride, rows, base, offsets, n_keys, f16, n, scale, row,
                                     out, out_stride));
  for (int64_t j = 0; j < n_keys; ++j) {
    const float* k = CacheRow(base, offsets[j], f16, n, row);
    for (int64_t r = 0; r < rows; ++r) {
      out[r * out_stride + j] = scale * DotF32Portable(a + r * a_stride, k, n);
    }
  }
}

void AttentionValues(const float* w, int64_t w_stride, int64_t rows, const uint8_t* base,
                     const size_t* offsets, int64_t n_keys, bool f16, int64_t n, float* row,
                     float* y, int64_t y_stride) {
  PIPEINFER_DISPATCH(
      AttentionValues(w, w_stride, rows, base, offsets, n_keys, f16, n, row, y, y_stride));
  for (int64_t j = 0; j < n_keys; ++j) {
    const float* v = CacheRow(base, offsets[j], f16, n, row);
    for (int64_t r = 0; r < rows; ++r) {
      const float s = w[r * w_stride + j];
      float* yr = y + r * y_stride;
      for (int64_t i = 0; i < n; ++i) yr[i] += s * v[i];
    }
  }
}

// As llama.cpp: the squares are summed in double, the mean and the scale are float, and the
// result is (x * scale) * w.
void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* out) {
  PIPEINFER_DISPATCH(RmsNorm(x, w, n, eps, out));
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i] * x[i]);
  const float mean = n > 0 ? static_cast<float>(sum / static_cast<double>(n)) : 0.0f;
  const float scale = 1.0f / std::sqrt(mean + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] * scale) * w[i];
}

void SwiGlu(const float* gate, const float* up, float* out, int64_t n) {
  PIPEINFER_DISPATCH(SwiGlu(gate, up, out, n));
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

float SoftmaxInPlace(float* x, int64_t n) {
  PIPEINFER_DISPATCH(SoftmaxInPlace(x, n));
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) max = std::fmax(max, x[i]);
  if (max == -std::numeric_limits<float>::infinity()) {  // empty, or everything masked
    for (int64_t i = 0; i < n; ++i) x[i] = 0.0f;
    return max;
  }
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
  return max + static_cast<float>(std::log(sum));
}

}  // namespace pipeinfer::kernels
