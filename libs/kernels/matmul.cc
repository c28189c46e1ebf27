// MatMul: argument checks, the row split over the pool, and the portable row kernel.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/formats.h"
#include "kernels/kernels.h"
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
// every token of the group to that token's eight interleaved partial sums.
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
