// Batch invariance: a token's MatMul row must have the same bits whatever batch it is computed in
// (how many tokens, where the token sits among them, which other tokens share the call) and
// however many threads split the rows, for every weight type, both QuantMath settings and both
// code paths. The stage servers batch runs of different requests into one forward pass and promise
// the results of unbatched runs. The reference is always MatMul over the token alone.
//
// The element-wise vector kernels, which the forward pass applies to whole [n_tokens x width]
// buffers, must likewise give element j the same bits whatever the buffer's length.
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/kernels.h"
#include "kernels_test_util.h"

namespace pipeinfer::kernels {
namespace {

using gguf::TensorType;
using testing::AllTypes;
using testing::Path;
using testing::Paths;
using testing::RandomRows;
using testing::ScopedPath;
using testing::ScopedQuantMath;
using testing::TypeName;

constexpr float kSentinel = -12345.0f;
constexpr int64_t kMaxTokens = 130;
// Around every grouping the kernels might use (4, 8, 16, 32, 64 tokens ...), and larger.
const int64_t kBatchSizes[] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13,
                               14, 15, 16, 17, 18, 19, 20, 31, 33, 64, 65, 130};

const char* MathName(QuantMath m) { return m == QuantMath::kFast ? "fast" : "exact"; }

// Column counts per type: plain types with and without a partial last vector group; an odd number
// of 32-blocks (the integer Q4_0 kernel pairs blocks); several 256-blocks.
std::vector<int64_t> ColsFor(TensorType t) {
  const int block = gguf::TypeInfo(t).block_size;
  if (block == 1) return {288, 301};
  if (block == 32) return {32 * 11};
  return {256 * 3};
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(MatMulInvariance, EveryRowMatchesItsSingleTokenRun) {
  ThreadPool pool1(1), pool3(3);
  constexpr int64_t kRows = 23;  // not a multiple of the pool's row grain
  constexpr int64_t kYStride = kRows + 2;
  for (TensorType type : AllTypes()) {
    for (int64_t cols : ColsFor(type)) {
      std::mt19937 rng(1000 + static_cast<uint32_t>(type) * 7 + static_cast<uint32_t>(cols));
      const auto& info = gguf::TypeInfo(type);
      const std::vector<uint8_t> wdata = RandomRows(type, kRows, cols, rng, /*moderate=*/true);
      const Matrix m{type, wdata.data(), kRows, cols,
                     static_cast<size_t>(cols / info.block_size * info.type_size)};
      // Token rows are padded with NaN: a kernel reading past a row poisons the result.
      const int64_t x_stride = cols + 5;
      std::vector<float> x(kMaxTokens * x_stride, std::numeric_limits<float>::quiet_NaN());
      std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
      for (int64_t t = 0; t < kMaxTokens; ++t) {
        for (int64_t c = 0; c < cols; ++c) x[t * x_stride + c] = unit(rng);
      }
      for (QuantMath math : {QuantMath::kExact, QuantMath::kFast}) {
        ScopedQuantMath scoped_math(math);
        for (const Path& p : Paths()) {
          ScopedPath scoped_path(p);
          const std::string where = TypeName(type) + " cols " + std::to_string(cols) + " " +
                                    MathName(math) + " " + p.name;
          // The reference: every token alone, one thread.
          std::vector<float> single(kMaxTokens * kYStride, kSentinel);
          for (int64_t t = 0; t < kMaxTokens; ++t) {
            MatMul(m, x.data() + t * x_stride, x_stride, 1, single.data() + t * kYStride, kYStride,
                   pool1);
          }
          for (int64_t t = 0; t < kMaxTokens; ++t) {
            for (int64_t r = 0; r < kRows; ++r) {
              ASSERT_NE(single[t * kYStride + r], kSentinel) << where;  // written
            }
          }
          for (ThreadPool* pool : {&pool1, &pool3}) {
            int failures = 0;
            for (int64_t n : kBatchSizes) {
              // Start at a varying token so that a token sits at different places in its batch.
              const int64_t first = (n * 7) % (kMaxTokens - n + 1);
              std::vector<float> y(n * kYStride, kSentinel);
              MatMul(m, x.data() + first * x_stride, x_stride, n, y.data(), kYStride, *pool);
              for (int64_t t = 0; t < n; ++t) {
                const float* want = single.data() + (first + t) * kYStride;
                const float* got = y.data() + t * kYStride;
                if (std::memcmp(got, want, kRows * sizeof(float)) == 0) continue;
                int64_t r = 0;
                while (Bits(got[r]) == Bits(want[r])) ++r;
                if (++failures <= 3) {
                  ADD_FAILURE() << where << " threads " << pool->size() << ": n_tokens " << n
                                << ", token " << t << " (input " << first + t << "), row " << r
                                << ": " << got[r] << " (0x" << std::hex << Bits(got[r])
                                << ") vs alone " << want[r] << " (0x" << Bits(want[r]) << std::dec
                                << ")";
                }
              }
            }
            EXPECT_EQ(failures, 0) << where << " threads " << pool->size();
          }
        }
      }
    }
  }
}

// Long rows: the AVX-512 path splits a large batch into token blocks (sized for L2) and rows into
// blocks over the threads (2-D tiles of rows x tokens, 4 x 4 / 4 x 6 micro-tiles inside). A
// token's row must not depend on the block it falls in, on its place in a micro-tile, or on
// whether a block has fewer rows/tokens than a micro-tile.
TEST(MatMulInvariance, TiledLargeBatchesMatchSingleTokenRuns) {
  std::printf("[ paths    ] TiledLargeBatchesMatchSingleTokenRuns:%s\n",
              testing::PathsNote().c_str());
  ThreadPool pool1(1), pool2(2), pool3(3);
  constexpr int64_t kRows = 19, kCols = 8192, kTokens = 61;
  for (TensorType type : {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kQ8_0,
                          TensorType::kQ4_0, TensorType::kQ4_K, TensorType::kQ6_K}) {
    std::mt19937 rng(31 + static_cast<uint32_t>(type));
    const auto& info = gguf::TypeInfo(type);
    const std::vector<uint8_t> wdata = RandomRows(type, kRows, kCols, rng, /*moderate=*/true);
    const Matrix m{type, wdata.data(), kRows, kCols,
                   static_cast<size_t>(kCols / info.block_size * info.type_size)};
    std::vector<float> x(kTokens * kCols);
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
    for (float& v : x) v = unit(rng);
    for (QuantMath math : {QuantMath::kExact, QuantMath::kFast}) {
      ScopedQuantMath scoped_math(math);
      for (const Path& p : Paths()) {
        ScopedPath scoped_path(p);
        std::vector<float> single(kTokens * kRows);
        for (int64_t t = 0; t < kTokens; ++t) {
          MatMul(m, x.data() + t * kCols, kCols, 1, single.data() + t * kRows, kRows, pool1);
        }
        for (ThreadPool* pool : {&pool1, &pool2, &pool3}) {
          std::vector<float> y(kTokens * kRows, kSentinel);
          MatMul(m, x.data(), kCols, kTokens, y.data(), kRows, *pool);
          EXPECT_EQ(0, std::memcmp(y.data(), single.data(), y.size() * sizeof(float)))
              << TypeName(type) << " " << MathName(math) << " " << p.name << " threads "
              << pool->size();
        }
      }
    }
  }
}

// Batches larger than one register group go through the same kernel group by group, over tiles
// of rows sized by the row length: zero columns (row_bytes 0) must still give zeros.
TEST(MatMulInvariance, LargeBatchesWithoutColumnsGiveZeros) {
  ThreadPool pool(3);
  for (const Path& p : Paths()) {
    ScopedPath scoped(p);
    for (TensorType type : {TensorType::kF32, TensorType::kQ4_0}) {
      const Matrix m{type, nullptr, 5, 0, 0};
      std::vector<float> x(1, 1.0f), y(20 * 5, kSentinel);
      MatMul(m, x.data(), 0, 20, y.data(), 5, pool);
      for (float v : y) EXPECT_EQ(v, 0.0f) << p.name << " " << TypeName(type);
    }
  }
}

// Element j of a length-n call must equal a length-1 call on element j (which runs entirely in
// the scalar tail, where the length-n call may use the vector body).
TEST(VecInvariance, ElementwiseResultsDoNotDependOnLength) {
  constexpr int64_t kN = 70;
  std::mt19937 rng(77);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f), wide(-12.0f, 12.0f);
  std::vector<float> a(kN), b(kN), y0(kN);
  std::vector<uint16_t> h(kN);
  for (int64_t i = 0; i < kN; ++i) {
    a[i] = wide(rng);
    b[i] = unit(rng);
    y0[i] = unit(rng);
    h[i] = FloatToHalf(unit(rng));
  }
  const float s = 0.7391f;
  for (const Path& p : Paths()) {
    ScopedPath scoped(p);
    for (int64_t n = 1; n <= kN; ++n) {
      std::vector<float> swiglu(n), axpy(y0.begin(), y0.begin() + n), axpy16(axpy), to_f(n);
      std::vector<uint16_t> to_h(n);
      SwiGlu(a.data(), b.data(), swiglu.data(), n);
      AxpyF32(s, b.data(), axpy.data(), n);
      AxpyF16(s, h.data(), axpy16.data(), n);
      FloatToHalfN(a.data(), to_h.data(), n);
      HalfToFloatN(h.data(), to_f.data(), n);
      for (int64_t j = 0; j < n; ++j) {
        float one;
        SwiGlu(&a[j], &b[j], &one, 1);
        EXPECT_EQ(Bits(swiglu[j]), Bits(one)) << p.name << " SwiGlu n " << n << " j " << j;
        one = y0[j];
        AxpyF32(s, &b[j], &one, 1);
        EXPECT_EQ(Bits(axpy[j]), Bits(one)) << p.name << " AxpyF32 n " << n << " j " << j;
        one = y0[j];
        AxpyF16(s, &h[j], &one, 1);
        EXPECT_EQ(Bits(axpy16[j]), Bits(one)) << p.name << " AxpyF16 n " << n << " j " << j;
        uint16_t one_h;
        FloatToHalfN(&a[j], &one_h, 1);
        EXPECT_EQ(to_h[j], one_h) << p.name << " FloatToHalfN n " << n << " j " << j;
        HalfToFloatN(&h[j], &one, 1);
        EXPECT_EQ(Bits(to_f[j]), Bits(one)) << p.name << " HalfToFloatN n " << n << " j " << j;
      }
    }
  }
}

// The contracts the CPU attention relies on (kernels.h): a dot or axpy with an F16 row equals the
// F32 one on the row converted once, and the several-vector forms equal single calls, bit for bit,
// on every path and every length (vector body and scalar tail).
TEST(VecInvariance, HalfRowKernelsEqualFloatKernelsOnTheConvertedRow) {
  constexpr int64_t kN = 300;
  std::mt19937 rng(78);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f), wide(-8.0f, 8.0f);
  std::vector<float> a(kN), y0(kN), converted(kN);
  std::vector<uint16_t> h(kN);
  for (int64_t i = 0; i < kN; ++i) {
    a[i] = wide(rng);
    y0[i] = unit(rng);
    h[i] = FloatToHalf(wide(rng));
  }
  const float s = -0.4127f;
  for (const Path& p : Paths()) {
    ScopedPath scoped(p);
    for (int64_t n : {1, 7, 8, 31, 32, 33, 64, 100, 128, 256, 300}) {
      HalfToFloatN(h.data(), converted.data(), n);
      EXPECT_EQ(Bits(DotF32F16(a.data(), h.data(), n)), Bits(DotF32(a.data(), converted.data(), n)))
          << p.name << " n " << n;
      std::vector<float> y16(y0.begin(), y0.begin() + n), y32(y16);
      AxpyF16(s, h.data(), y16.data(), n);
      AxpyF32(s, converted.data(), y32.data(), n);
      for (int64_t j = 0; j < n; ++j) {
        EXPECT_EQ(Bits(y16[j]), Bits(y32[j])) << p.name << " n " << n << " j " << j;
      }
      // The several-vector forms equal the single calls (3 vectors at stride n + 5).
      const int64_t stride = n + 5, rows = 3;
      std::vector<float> qs(rows * stride), dots(rows), ys(rows * stride),
          coef = {0.3f, -1.7f, 2.f};
      for (size_t i = 0; i < qs.size(); ++i) qs[i] = wide(rng), ys[i] = unit(rng);
      std::vector<float> ys_single(ys);
      DotF32Rows(qs.data(), stride, rows, converted.data(), n, dots.data());
      AxpyF32Rows(coef.data(), converted.data(), ys.data(), stride, rows, n);
      for (int64_t r = 0; r < rows; ++r) {
        EXPECT_EQ(Bits(dots[r]), Bits(DotF32(qs.data() + r * stride, converted.data(), n)))
            << p.name << " DotF32Rows n " << n << " r " << r;
        AxpyF32(coef[r], converted.data(), ys_single.data() + r * stride, n);
      }
      for (size_t i = 0; i < ys.size(); ++i) {
        EXPECT_EQ(Bits(ys[i]), Bits(ys_single[i]))
            << p.name << " AxpyF32Rows n " << n << " i " << i;
      }
    }
  }
}

TEST(VecInvariance, AttentionKernelsEqualThePerKeyComputation) {
  // Rows gathered from a paged cache (scattered offsets, F16 or F32) against DotF32 / AxpyF32 on
  // each converted row, in key order, bit for bit; on every path.
  std::mt19937 rng(79);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f), wide(-4.0f, 4.0f);
  for (const Path& p : Paths()) {
    ScopedPath scoped(p);
    for (bool f16 : {true, false}) {
      for (int64_t n : {5, 32, 64, 100, 128}) {
        const int64_t n_keys = 37, rows = 3, a_stride = n + 3;
        const size_t elem = f16 ? 2 : 4, slot = static_cast<size_t>(n + 9) * elem;
        std::vector<uint8_t> cache(slot * 64);
        std::vector<size_t> offsets(n_keys);
        for (int64_t j = 0; j < n_keys; ++j) offsets[j] = ((j * 17) % 64) * slot;
        std::vector<std::vector<float>> key(n_keys, std::vector<float>(n));
        for (int64_t j = 0; j < n_keys; ++j) {
          for (int64_t i = 0; i < n; ++i) {
            const float v = wide(rng);
            if (f16) {
              const uint16_t h = FloatToHalf(v);
              std::memcpy(cache.data() + offsets[j] + i * 2, &h, 2);
              key[j][i] = HalfToFloat(h);
            } else {
              std::memcpy(cache.data() + offsets[j] + i * 4, &v, 4);
              key[j][i] = v;
            }
          }
        }
        std::vector<float> a(rows * a_stride), row(n), scores(rows * n_keys);
        for (float& v : a) v = wide(rng);
        const float scale = 0.1767767f;
        AttentionScores(a.data(), a_stride, rows, cache.data(), offsets.data(), n_keys, f16, n,
                        scale, row.data(), scores.data(), n_keys);
        std::vector<float> y(rows * a_stride), y_ref;
        for (float& v : y) v = unit(rng);
        y_ref = y;
        AttentionValues(scores.data(), n_keys, rows, cache.data(), offsets.data(), n_keys, f16, n,
                        row.data(), y.data(), a_stride);
        for (int64_t j = 0; j < n_keys; ++j) {
          for (int64_t r = 0; r < rows; ++r) {
            const float want = scale * DotF32(a.data() + r * a_stride, key[j].data(), n);
            EXPECT_EQ(Bits(scores[r * n_keys + j]), Bits(want))
                << p.name << (f16 ? " f16" : " f32") << " n " << n << " key " << j;
            AxpyF32(scores[r * n_keys + j], key[j].data(), y_ref.data() + r * a_stride, n);
          }
        }
        for (size_t i = 0; i < y.size(); ++i) {
          EXPECT_EQ(Bits(y[i]), Bits(y_ref[i])) << p.name << (f16 ? " f16" : " f32") << " n " << n;
        }
      }
    }
  }
}

}  // namespace
}  // namespace pipeinfer::kernels
