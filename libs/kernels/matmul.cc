// MatMul: argument checks, the row split over the pool, and the portable row kernel.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/formats.h"
#include "kernels/interleave.h"
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

#if PIPEINFER_KERNELS_X86
// The AVX-512 kernels work on tiles of rows x tokens (2-D split): a tile's token block is sized
// so that its activations stay in L2 while the tile's rows go through them; tiles are numbered
// row block by row block, so each thread gets a contiguous range of rows (decode: rows only) and
// a row block's weights stay in cache while its token blocks go by. Results do not depend on the
// tiling (see the kernels).
bool UseAvx512Float(gguf::TensorType type) {
  return ActiveSimdLevel() == SimdLevel::kAvx512 && avx512::HasFloatKernel(type);
}
bool UseAvx512Quant(gguf::TensorType type) {
  return ActiveSimdLevel() == SimdLevel::kAvx512 && GetCpuFeatures().avx512_vnni &&
         avx512::HasQuantKernel(type);
}

template <class F>
void ForTiles(int64_t rows, int64_t n_tokens, int64_t token_bytes, ThreadPool& pool,
              const F& tile) {
  constexpr int64_t kActBudget = 384 * 1024;  // activation bytes of a token block (L2)
  int64_t tb = std::max<int64_t>(1, kActBudget / std::max<int64_t>(1, token_bytes));
  if (tb >= n_tokens) {
    tb = n_tokens;
  } else if (tb > 12) {
    tb -= tb % 12;  // whole micro-kernel tiles (4 tokens)
  }
  const int64_t n_tb = (n_tokens + tb - 1) / tb;
  int64_t rb = 64;
  while (rb > 8 && ((rows + rb - 1) / rb) * n_tb < 4 * pool.size()) rb /= 2;
  const int64_t n_rb = (rows + rb - 1) / rb;
  pool.ParallelFor(n_rb * n_tb, 1, [&](int64_t u0, int64_t u1, int) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t r0 = u / n_tb * rb, t0 = u % n_tb * tb;
      tile(r0, std::min(rows, r0 + rb), t0, std::min(n_tokens, t0 + tb));
    }
  });
}
#endif

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
  thread_local std::vector<float> sums;  // Q8_1
  const int64_t nb = m.cols / ab;
  const bool q8_1 = internal::QuantActHasSums(m.type);
  qs.resize(static_cast<size_t>(n_tokens * m.cols));
  d.resize(static_cast<size_t>(n_tokens * nb));
  if (ab == 256) bsums.resize(static_cast<size_t>(n_tokens * nb * 16));
  if (q8_1) sums.resize(static_cast<size_t>(n_tokens * nb));
  // Each token's row on its own (batches: split over the pool; the result does not depend on it).
  // The buffers are the calling thread's (thread_local): the workers get their addresses.
  int8_t* const qs_p = qs.data();
  float* const d_p = d.data();
  int16_t* const bsums_p = bsums.data();
  float* const sums_p = sums.data();
  const auto quantize = [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      if (q8_1) {
        internal::QuantizeQ8_1(x + t * x_stride, m.cols, qs_p + t * m.cols, d_p + t * nb,
                               sums_p + t * nb);
      } else if (ab == 32) {
        internal::QuantizeQ8_0(x + t * x_stride, m.cols, qs_p + t * m.cols, d_p + t * nb);
      } else {
        internal::QuantizeQ8_K(x + t * x_stride, m.cols, qs_p + t * m.cols, d_p + t * nb,
                               bsums_p + t * nb * 16);
      }
    }
  };
  if (n_tokens == 1) {
    quantize(0, 1, 0);
  } else {
    pool.ParallelFor(n_tokens, 1, quantize);
  }
  internal::QuantActs a;
#if PIPEINFER_KERNELS_X86
  thread_local std::vector<int8_t> qs_pairs;
  thread_local std::vector<float> d_pairs;
  const bool tiles512 = UseAvx512Quant(m.type);  // these kernels read qs and d only
  if (UsingSimd() && !tiles512 && m.type == gguf::TensorType::kQ4_0) {
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
  thread_local std::vector<int32_t> block_init;
  if (tiles512 && (m.type == gguf::TensorType::kQ4_0 || m.type == gguf::TensorType::kQ8_0)) {
    const int32_t offset = m.type == gguf::TensorType::kQ4_0 ? 8 : 128;
    block_init.resize(static_cast<size_t>(n_tokens * nb));
    for (int64_t i = 0; i < n_tokens * nb; ++i) {
      int32_t sum = 0;
      for (int j = 0; j < 32; ++j) sum += qs[32 * i + j];
      block_init[i] = -offset * sum;
    }
    a.block_init = block_init.data();
  }
  thread_local std::vector<int32_t> q4_k_pairs;
  if (tiles512 && m.type == gguf::TensorType::kQ4_K) {
    q4_k_pairs.resize(static_cast<size_t>(n_tokens * nb * 4));
    for (int64_t i = 0; i < n_tokens * nb; ++i) {  // block i's 16 bsums of 16 quants each
      const int16_t* bs = bsums.data() + 16 * i;
      for (int k = 0; k < 4; ++k) {
        const int32_t lo = bs[4 * k] + bs[4 * k + 1], hi = bs[4 * k + 2] + bs[4 * k + 3];
        q4_k_pairs[4 * i + k] = static_cast<int32_t>((static_cast<uint32_t>(hi) << 16) |
                                                     (static_cast<uint32_t>(lo) & 0xffff));
      }
    }
    a.q4_k_bsum_pairs = q4_k_pairs.data();
  }
  thread_local std::vector<int32_t> q6_k_offsets;
  if (tiles512 && m.type == gguf::TensorType::kQ6_K) {
    q6_k_offsets.resize(static_cast<size_t>(n_tokens * nb * 16));
    for (size_t i = 0; i < q6_k_offsets.size(); ++i) q6_k_offsets[i] = -32 * bsums[i];
    a.q6_k_offsets = q6_k_offsets.data();
  }
#endif
  a.qs = qs.data();
  a.d = d.data();
  a.bsums = ab == 256 ? bsums.data() : nullptr;
  a.s = q8_1 ? sums.data() : nullptr;
  a.cols = m.cols;
#if PIPEINFER_KERNELS_X86
  if (tiles512) {
    ForTiles(m.rows, n_tokens, m.cols, pool, [&](int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
      avx512::QuantMatMulTile(m, a, y, y_stride, r0, r1, t0, t1);
    });
    return;
  }
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

// A path that computes on the file layout, given an interleaved matrix (the weights were placed
// for another path): the rows are restored chunk by chunk. Every row's result is the one the
// path gives for the file layout (rows are independent).
void MatMulDeinterleaved(const Matrix& m, const float* x, int64_t x_stride, int64_t n_tokens,
                         float* y, int64_t y_stride, ThreadPool& pool) {
  constexpr int64_t kChunkRows = 256;  // a multiple of every interleave
  thread_local std::vector<uint8_t> plain;
  const auto* f = internal::FindFormat(m.type);
  const size_t row_bytes = static_cast<size_t>(m.cols / f->block * f->bytes);
  plain.resize(static_cast<size_t>(std::min(kChunkRows, m.rows)) * row_bytes);
  for (int64_t r0 = 0; r0 < m.rows; r0 += kChunkRows) {
    const int64_t n = std::min(kChunkRows, m.rows - r0);
    internal::DeinterleaveRows(m, r0, n, plain.data());
    const Matrix chunk{m.type, plain.data(), n, m.cols, row_bytes};
    MatMul(chunk, x, x_stride, n_tokens, y + r0, y_stride, pool);
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
  if (m.interleave != 1) {
    if (m.interleave != kGroupRows || !HasGroupedLayout(m.type) ||
        m.cols % GroupBlockCols(m.type) != 0) {
      BadMatrix(w, "unsupported row interleave");
    }
#if PIPEINFER_KERNELS_X86
    const bool direct =
        UseAvx512Float(m.type) || (GetQuantMath() == QuantMath::kFast && UseAvx512Quant(m.type));
#else
    const bool direct = false;
#endif
    if (!direct) return MatMulDeinterleaved(m, x, x_stride, n_tokens, y, y_stride, pool);
  }
  if (GetQuantMath() == QuantMath::kFast) {
    const int ab = internal::QuantActBlock(w.type);
    if (ab != 0 && w.cols % ab == 0) {
      return QuantMatMul(m, ab, x, x_stride, n_tokens, y, y_stride, pool);
    }
  }
#if PIPEINFER_KERNELS_X86
  if (UseAvx512Float(w.type)) {
    ForTiles(w.rows, n_tokens, 4 * w.cols, pool,
             [&](int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
               avx512::MatMulTile(m, x, x_stride, y, y_stride, r0, r1, t0, t1);
             });
    return;
  }
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
