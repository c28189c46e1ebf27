// MatMul against a naive double-precision product of DequantizeRow rows, for every type, batch
// sizes around the kernels' register blocking, strided inputs/outputs, both code paths, and
// several thread counts (which must not change a single bit).
#include <cmath>
#include <cstdio>
#include <limits>

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
using testing::TypeName;

struct Case {
  TensorType type;
  int64_t rows, cols, n_tokens;
  int64_t x_stride, y_stride;
};

struct Data {
  std::vector<uint8_t> w;
  Matrix m;
  std::vector<float> x;
  std::vector<double> ref;      // [t][r]
  std::vector<double> abs_sum;  // sum |w x|, scales the tolerance
};

constexpr float kYSentinel = -12345.0f;

// These tests check the exact numerics (QuantMath::kExact); qdot_test.cc covers kFast.
class ExactMath : public ::testing::Environment {
 public:
  void SetUp() override { SetQuantMath(QuantMath::kExact); }
};
const auto* const kExactMath = ::testing::AddGlobalTestEnvironment(new ExactMath);

Data MakeData(const Case& c, std::mt19937& rng) {
  Data d;
  const auto& info = gguf::TypeInfo(c.type);
  d.w = RandomRows(c.type, c.rows, c.cols, rng, /*moderate=*/true);
  d.m = Matrix{c.type, d.w.data(), c.rows, c.cols,
               static_cast<size_t>(c.cols / info.block_size * info.type_size)};
  // Padding between token rows is NaN: reading it would poison the result.
  d.x.assign(c.n_tokens * c.x_stride, std::numeric_limits<float>::quiet_NaN());
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (int64_t t = 0; t < c.n_tokens; ++t) {
    for (int64_t i = 0; i < c.cols; ++i) d.x[t * c.x_stride + i] = unit(rng);
  }
  d.ref.assign(c.n_tokens * c.rows, 0.0);
  d.abs_sum.assign(c.n_tokens * c.rows, 0.0);
  std::vector<float> row(c.cols);
  for (int64_t r = 0; r < c.rows; ++r) {
    DequantizeRow(d.m, r, row.data());
    for (int64_t t = 0; t < c.n_tokens; ++t) {
      double s = 0, a = 0;
      for (int64_t i = 0; i < c.cols; ++i) {
        const double p = static_cast<double>(row[i]) * d.x[t * c.x_stride + i];
        s += p;
        a += std::fabs(p);
      }
      d.ref[t * c.rows + r] = s;
      d.abs_sum[t * c.rows + r] = a;
    }
  }
  return d;
}

std::vector<float> RunMatMul(const Case& c, const Data& d, ThreadPool& pool) {
  std::vector<float> y(c.n_tokens * c.y_stride, kYSentinel);
  MatMul(d.m, d.x.data(), c.x_stride, c.n_tokens, y.data(), c.y_stride, pool);
  return y;
}

// Checks y against the reference; returns the number of bad entries (reports a few).
int Check(const Case& c, const Data& d, const std::vector<float>& y, const char* what) {
  int bad = 0;
  for (int64_t t = 0; t < c.n_tokens; ++t) {
    for (int64_t r = 0; r < c.y_stride; ++r) {
      const float got = y[t * c.y_stride + r];
      bool ok;
      double want = kYSentinel;
      if (r >= c.rows) {
        ok = got == kYSentinel;  // padding must be left alone
      } else {
        want = d.ref[t * c.rows + r];
        ok = std::fabs(got - want) <= 1e-5 * d.abs_sum[t * c.rows + r] + 1e-30;
      }
      if (!ok && ++bad <= 3) {
        ADD_FAILURE() << what << " " << TypeName(c.type) << " " << c.rows << "x" << c.cols
                      << " n_tokens " << c.n_tokens << ": y[" << t << "][" << r << "] = " << got
                      << ", want " << want;
      }
    }
  }
  return bad;
}

int64_t ColsFor(TensorType t, bool with_tail) {
  const auto& info = gguf::TypeInfo(t);
  if (info.block_size == 1) return with_tail ? 301 : 288;  // plain types: odd lengths allowed
  if (info.block_size == 32) return 32 * 11;               // not a multiple of 256
  return 256 * 3;
}

TEST(KernelsMatMul, MatchesNaiveReferenceOnEveryPathAndThreadCount) {
  ThreadPool pool1(1), pool2(2), pool3(3);
  std::mt19937 rng(99);
  const int64_t kTokens[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 70};
  for (TensorType type : AllTypes()) {
    for (bool tail : {false, true}) {
      if (tail && gguf::TypeInfo(type).block_size != 1) continue;
      for (int64_t n : kTokens) {
        const int64_t cols = ColsFor(type, tail);
        const Case c{type, 37, cols, n, cols + 3, 37 + 5};
        const Data d = MakeData(c, rng);
        for (const Path& p : Paths()) {
          ScopedPath scoped(p);
          const auto y1 = RunMatMul(c, d, pool1);
          EXPECT_EQ(Check(c, d, y1, p.name), 0);
          const auto y2 = RunMatMul(c, d, pool2);
          const auto y3 = RunMatMul(c, d, pool3);
          // Bitwise equal across thread counts (memcmp: NaN-safe, sign-of-zero exact).
          EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * 4))
              << p.name << " " << TypeName(type) << " n " << n << " 1 vs 2 threads";
          EXPECT_EQ(0, std::memcmp(y1.data(), y3.data(), y1.size() * 4))
              << p.name << " " << TypeName(type) << " n " << n << " 1 vs 3 threads";
        }
      }
    }
  }
}

TEST(KernelsMatMul, ScalarAndSimdAgree) {
  std::printf("[ paths    ] ScalarAndSimdAgree:%s\n", testing::PathsNote().c_str());
  if (!CpuHasAvx2Fma()) GTEST_SKIP() << "no AVX2/FMA/F16C";
  ThreadPool pool(2);
  std::mt19937 rng(5);
  for (TensorType type : AllTypes()) {
    for (int64_t n : {1, 4, 16, 30}) {
      const int64_t cols = gguf::TypeInfo(type).block_size == 256 ? 1024 : 1024 + 32;
      const Case c{type, 19, cols, n, cols, 19};
      const Data d = MakeData(c, rng);
      std::vector<float> ys;
      {
        ScopedPath s(Paths()[0]);
        ys = RunMatMul(c, d, pool);
      }
      for (size_t k = 1; k < Paths().size(); ++k) {
        ScopedPath s(Paths()[k]);
        const std::vector<float> yv = RunMatMul(c, d, pool);
        for (size_t i = 0; i < ys.size(); ++i) {
          EXPECT_LE(std::fabs(ys[i] - yv[i]), 1e-5 * d.abs_sum[i] + 1e-30)
              << Paths()[k].name << " " << TypeName(type) << " n " << n << " i " << i;
        }
      }
    }
  }
}

// With one-hot activations (token i is the unit vector e_i) every product but one is zero, so
// MatMul returns the decoded weights themselves: the SIMD block decoders must reproduce
// DequantizeRow (bit-exact against naive decoders in dequant_test.cc) bit for bit, for any finite
// scale. Zeros compare equal whatever their sign (0 * x + 0 may lose a sign).
TEST(KernelsMatMul, OneHotActivationsReturnTheDecodedWeightsExactly) {
  ThreadPool pool(2);
  std::mt19937 rng(11);
  for (TensorType type : AllTypes()) {
    const auto& info = gguf::TypeInfo(type);
    const int64_t cols =
        info.block_size == 1 ? 77 : info.block_size * (info.block_size == 32 ? 3 : 1);
    const int64_t rows = 9;
    const auto w = RandomRows(type, rows, cols, rng, /*moderate=*/false);
    const Matrix m{type, w.data(), rows, cols,
                   static_cast<size_t>(cols / info.block_size * info.type_size)};
    std::vector<float> x(cols * cols, 0.0f);
    for (int64_t i = 0; i < cols; ++i) x[i * cols + i] = 1.0f;
    std::vector<float> want(rows * cols);
    for (int64_t r = 0; r < rows; ++r) DequantizeRow(m, r, want.data() + r * cols);
    for (const Path& p : Paths()) {
      ScopedPath scoped(p);
      std::vector<float> y(cols * rows);
      MatMul(m, x.data(), cols, cols, y.data(), rows, pool);
      int bad = 0;
      for (int64_t i = 0; i < cols; ++i) {
        for (int64_t r = 0; r < rows; ++r) {
          const float got = y[i * rows + r], exp = want[r * cols + i];
          if ((got == 0.0f && exp == 0.0f) || testing::SameFloat(got, exp)) continue;
          if (++bad <= 3) {
            ADD_FAILURE() << p.name << " " << TypeName(type) << " row " << r << " col " << i << ": "
                          << got << " vs " << exp;
          }
        }
      }
    }
  }
}

TEST(KernelsMatMul, TinyAndDegenerateShapes) {
  ThreadPool pool(3);
  std::mt19937 rng(3);
  for (const Path& p : Paths()) {
    ScopedPath scoped(p);
    // Fewer rows than threads, and plain rows shorter than one vector.
    for (const Case& c :
         {Case{TensorType::kQ4_0, 1, 32, 3, 32, 1}, Case{TensorType::kF32, 2, 5, 2, 5, 2},
          Case{TensorType::kF16, 5, 7, 9, 7, 5}, Case{TensorType::kBF16, 3, 1, 1, 1, 3},
          Case{TensorType::kQ6_K, 2, 256, 1, 256, 2}}) {
      const Data d = MakeData(c, rng);
      EXPECT_EQ(Check(c, d, RunMatMul(c, d, pool), p.name), 0);
    }
    // No columns: every output is 0. No tokens / no rows: nothing is written.
    const Case empty{TensorType::kF32, 4, 0, 2, 1, 4};
    const Data d = MakeData(empty, rng);
    std::vector<float> y(8, kYSentinel);
    MatMul(d.m, d.x.data(), 1, 2, y.data(), 4, pool);
    for (float v : y) EXPECT_EQ(v, 0.0f);
    std::fill(y.begin(), y.end(), kYSentinel);
    MatMul(d.m, d.x.data(), 1, 0, y.data(), 4, pool);
    for (float v : y) EXPECT_EQ(v, kYSentinel);
  }
}

}  // namespace
}  // namespace pipeinfer::kernels
