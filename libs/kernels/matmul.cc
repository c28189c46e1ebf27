// MatMul: argument checks, the row split over the pool, and the portable row kernel.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/formats.h"
#include "kernels/kernels.h"
#include "kernels/qdot.h"
#include "kernels/simd.h"

namespace pipeinfer::kernels {
namespace {

constexpr int64_t kGroup = 256;      // weights decoded at a time (a multiple of every block size)
constexpr int64_t kTokenGroup = 64;  // tokens whose partial sums are kept at once
constexpr int64_t kRowGrain = 4;     // rows per unit of the pool's partition

float SumLanes(const float p[8]) {
  return ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]));
}

// Portable kernel. Per row: decode kGroup weights into `buf` once, then add their products with
// every token of the group to that token's eight interleaved partial sums. A token's sums see the
// same additions in the same order whatever the batch (token groups only bound the scratch), so
// batched and single-token results are bit-identical, as on the AVX2 path (in a different order:
// the two paths agree to rounding only).
void ScalarRows(const Matrix& w, const internal::Format& f, const float* x, int64_t x_stride,
                int64_t n_tokens, float* y, int64_t y_stride, int64_t r0, int64_t r1) {
  const int64_t group = std::max<int64_t>(kGroup, f.block);
  float buf[kGroup];
  float acc[kTokenGroup][8];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kTokenGroup) {
      const int64_t nt = std::min(kTokenGroup, n_tokens - t0);
      for (int64_t t = 0; t < nt; ++t) std::fill(acc[t], acc[t] + 8, 0.0f);
      for (int64_t c0 = 0; c0 < w.cols; c0 += group) {
        const int64_t len = std::min(group, w.cols - c0);
        f.decode(row + c0 / f.block * f.bytes, len / f.block, buf);
        for (int64_t t = 0; t < nt; ++t) {
          const float* xt = x + (t0 + t) * x_stride + c0;
          float* a = acc[t];
          int64_t i = 0;
          for (; i + 8 <= len; i += 8) {
            for (int l = 0; l < 8; ++l) a[l] += buf[i + l] * xt[i + l];
          }
          for (int l = 0; i < len; ++i, ++l) a[l] += buf[i] * xt[i];
        }
      }
      for (int64_t t = 0; t < nt; ++t) y[(t0 + t) * y_stride + r] = SumLanes(acc[t]);
    }
  }
}

// QuantMath::kFast for a type with an integer path: quantize every token's activations once, then
// integer dot products per row.
void QuantMatMul(const Matrix& m, int ab, const float* x, int64_t x_stride, int64_t n_tokens,
                 float* y, int64_t y_stride, ThreadPool& pool) {
  thread_local std::vector<int8_t> qs;
  thread_local std::vector<float> d;
  thread_local std::vector<int16_t> bsums;
  const int64_t nb = m.cols / ab;
  qs.resize(static_cast<size_t>(n_tokens * m.cols));
  d.resize(static_cast<size_t>(n_tokens * nb));
  if (ab == 256) bsums.resize(static_cast<size_t>(n_tokens * nb * 16));
  for (int64_t t = 0; t < n_tokens; ++t) {
    if (ab == 32) {
      internal::QuantizeQ8_0(x + t * x_stride, m.cols, qs.data() + t * m.cols, d.data() + t * nb);
    } else {
      internal::QuantizeQ8_K(x + t * x_stride, m.cols, qs.data() + t * m.cols, d.data() + t * nb,
                             bsums.data() + t * nb * 16);
    }
  }
  internal::QuantActs a;
#if PIPEINFER_KERNELS_X86
  thread_local std::vector<int8_t> qs_pairs;
  thread_local std::vector<float> d_pairs;
  if (UsingSimd() && m.type == gguf::TensorType::kQ4_0) {
    const int64_t np = m.cols / 64;
    qs_pairs.resize(static_cast<size_t>(n_tokens * m.cols));
    d_pairs.resize(static_cast<size_t>(n_tokens * np * 8));
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t p = 0; p < np; ++p) {
        const int8_t* src = qs.data() + t * m.cols + 64 * p;
        int8_t* dst = qs_pairs.data() + t * m.cols + 64 * p;
        for (int i = 0; i < 16; ++i) {
          dst[i] = src[i];
          dst[16 + i] = src[32 + i];
          dst[32 + i] = src[16 + i];
          dst[48 + i] = src[48 + i];
        }
        float* dp = d_pairs.data() + (t * np + p) * 8;
        for (int i = 0; i < 4; ++i) {
          dp[i] = d[t * nb + 2 * p];
          dp[4 + i] = d[t * nb + 2 * p + 1];
        }
      }
    }
    a.qs_pairs = qs_pairs.data();
    a.d_pairs = d_pairs.data();
  }
#endif
  a.qs = qs.data();
  a.d = d.data();
  a.bsums = ab == 256 ? bsums.data() : nullptr;
  a.cols = m.cols;
#if PIPEINFER_KERNELS_X86
  if (UsingSimd()) {
    pool.ParallelFor(m.rows, kRowGrain, [&](int64_t r0, int64_t r1, int) {
      avx2::QuantMatMulRows(m, a, n_tokens, y, y_stride, r0, r1);
    });
    return;
  }
#endif
  pool.ParallelFor(m.rows, kRowGrain, [&](int64_t r0, int64_t r1, int) {
    internal::ScalarQuantRows(m, a, n_tokens, y, y_stride, r0, r1);
  });
}

[[noreturn]] void BadMatrix(const Matrix& w, const char* why) {
  std::fprintf(stderr, "MatMul: %s (type %s, %lld x %lld)\n", why,
               gguf::TensorTypeName(static_cast<uint32_t>(w.type)).c_str(),
               static_cast<long long>(w.rows), static_cast<long long>(w.cols));
  std::abort();
}

}  // namespace

void MatMul(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y,
            int64_t y_stride, ThreadPool& pool) {
  const internal::Format* f = internal::FindFormat(w.type);
  if (f == nullptr) BadMatrix(w, "unsupported weight type");
  if (w.rows < 0 || w.cols < 0 || w.cols % f->block != 0) BadMatrix(w, "bad shape");
  if (n_tokens <= 0 || w.rows == 0) return;
  Matrix m = w;
  const size_t min_row_bytes = static_cast<size_t>(w.cols / f->block * f->bytes);
  if (m.row_bytes == 0) m.row_bytes = min_row_bytes;
  if (m.row_bytes < min_row_bytes) BadMatrix(w, "row_bytes too small");
  if (GetQuantMath() == QuantMath::kFast) {
    const int ab = internal::QuantActBlock(w.type);
    if (ab != 0 && w.cols % ab == 0) {
      return QuantMatMul(m, ab, x, x_stride, n_tokens, y, y_stride, pool);
    }
  }
#if PIPEINFER_KERNELS_X86
  if (UsingSimd()) {
    // Repack the activations once for all threads (buffer kept per calling thread).
    thread_local std::vector<float> packed_storage;
    const size_t need = static_cast<size_t>(avx2::PackedActivationsSize(w.cols, n_tokens)) + 8;
    if (packed_storage.size() < need) packed_storage.resize(need);
    float* packed = packed_storage.data();
    packed += (8 - (reinterpret_cast<uintptr_t>(packed) / sizeof(float)) % 8) % 8;  // 32-byte
    avx2::PackActivations(x, x_stride, n_tokens, w.cols, packed);
    std::atomic<bool> handled{true};  // false only for a type without an AVX2 kernel
    pool.ParallelFor(w.rows, kRowGrain, [&](int64_t r0, int64_t r1, int) {
      if (!avx2::MatMulRows(m, packed, n_tokens, y, y_stride, r0, r1)) handled = false;
    });
    if (handled) return;
  }
#endif
  pool.ParallelFor(w.rows, kRowGrain, [&](int64_t r0, int64_t r1, int) {
    ScalarRows(m, *f, x, x_stride, n_tokens, y, y_stride, r0, r1);
  });
}

}  // namespace pipeinfer::kernels
