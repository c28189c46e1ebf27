// QuantMath::kFast: MatMul of quantized weights with activations quantized to Q8_0 / Q8_K and
// integer dot products. Checked against a naive reference that quantizes the activations the same
// way (written here from the description in kernels.h / llama.cpp's formats) and sums in double;
// the portable and AVX2 paths against each other; the result's independence of batch size and
// thread count; and the distance to the exact numerics (bounded by the activation rounding).
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/kernels.h"
#include "kernels_test_util.h"

namespace pipeinfer::kernels {
namespace {

using gguf::TensorType;
using testing::Path;
using testing::Paths;
using testing::RandomRows;
using testing::ScopedPath;
using testing::TypeName;

class ScopedQuantMath {
 public:
  explicit ScopedQuantMath(QuantMath m) : old_(GetQuantMath()) { SetQuantMath(m); }
  ~ScopedQuantMath() { SetQuantMath(old_); }

 private:
  QuantMath old_;
};

const TensorType kFastTypes[] = {TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ4_K,
                                 TensorType::kQ6_K};

int ActBlock(TensorType t) { return t == TensorType::kQ4_K || t == TensorType::kQ6_K ? 256 : 32; }

float RoundToHalf(float f) { return pipeinfer::testing::HalfToFloat(FloatToHalf(f)); }

// Reference activation quantizers: x ~= d[b] * q[i] for i in block b.
//  Q8_0 (32): d = amax / 127 stored as f16; q = round-half-even(x * 127 / amax).
//  Q8_K (256): max = the value of largest magnitude; iscale = -128 / max;
//              q = min(127, round-half-even(iscale * x)); d = 1 / iscale (float).
void RefQuantize(TensorType t, const float* x, int64_t n, std::vector<int>* q,
                 std::vector<double>* d) {
  const int blk = ActBlock(t);
  q->assign(n, 0);
  d->assign(n / blk, 0.0);
  for (int64_t b = 0; b < n / blk; ++b) {
    const float* xb = x + b * blk;
    float amax = 0, max = 0;
    for (int i = 0; i < blk; ++i) {
      if (std::fabs(xb[i]) > amax) {
        amax = std::fabs(xb[i]);
        max = xb[i];
      }
    }
    if (blk == 32) {
      const float id = amax != 0 ? 127.0f / amax : 0.0f;
      (*d)[b] = RoundToHalf(amax / 127.0f);
      for (int i = 0; i < blk; ++i)
        (*q)[b * blk + i] = static_cast<int>(std::nearbyint(xb[i] * id));
    } else if (amax != 0) {
      const float iscale = -128.0f / max;
      (*d)[b] = 1.0f / iscale;
      for (int i = 0; i < blk; ++i) {
        (*q)[b * blk + i] = std::min(127, static_cast<int>(std::nearbyint(iscale * xb[i])));
      }
    }
  }
}

struct Data {
  std::vector<uint8_t> w;
  Matrix m;
  std::vector<float> x;
  std::vector<double> ref;      // fast-path reference [t][r]
  std::vector<double> exact;    // exact product [t][r]
  std::vector<double> abs_sum;  // sum |w x|
  std::vector<double> q_err;    // bound on |ref - exact| from the activation rounding
};

Data MakeData(TensorType type, int64_t rows, int64_t cols, int64_t n_tokens, std::mt19937& rng) {
  Data d;
  const auto& info = gguf::TypeInfo(type);
  d.w = RandomRows(type, rows, cols, rng, /*moderate=*/true);
  d.m = Matrix{type, d.w.data(), rows, cols,
               static_cast<size_t>(cols / info.block_size * info.type_size)};
  std::normal_distribution<float> normal(0.0f, 1.0f);
  d.x.resize(n_tokens * cols);
  for (float& v : d.x) v = normal(rng);
  const int blk = ActBlock(type);
  std::vector<float> row(cols);
  d.ref.assign(n_tokens * rows, 0);
  d.exact = d.abs_sum = d.q_err = d.ref;
  for (int64_t t = 0; t < n_tokens; ++t) {
    std::vector<int> q;
    std::vector<double> dx;
    RefQuantize(type, &d.x[t * cols], cols, &q, &dx);
    for (int64_t r = 0; r < rows; ++r) {
      DequantizeRow(d.m, r, row.data());
      double s = 0, e = 0, a = 0, err = 0;
      for (int64_t i = 0; i < cols; ++i) {
        const double w = row[i];
        s += w * (dx[i / blk] * q[i]);
        e += w * d.x[t * cols + i];
        a += std::fabs(w * d.x[t * cols + i]);
        err += std::fabs(w) * std::fabs(dx[i / blk]);  // |x - d q| <= |d| (clamp), < 0.6 |d| else
      }
      d.ref[t * rows + r] = s;
      d.exact[t * rows + r] = e;
      d.abs_sum[t * rows + r] = a;
      d.q_err[t * rows + r] = err;
    }
  }
  return d;
}

std::vector<float> RunFast(const Data& d, int64_t n_tokens, ThreadPool& pool) {
  std::vector<float> y(n_tokens * d.m.rows, -12345.0f);
  MatMul(d.m, d.x.data(), d.m.cols, n_tokens, y.data(), d.m.rows, pool);
  return y;
}

TEST(KernelsFastMath, MatchesQuantizedReferenceOnEveryPath) {
  ScopedQuantMath fast(QuantMath::kFast);
  ThreadPool pool1(1), pool2(2);
  std::mt19937 rng(7);
  for (TensorType type : kFastTypes) {
    const int64_t cols = ActBlock(type) == 32 ? 32 * 13 : 256 * 3;
    for (int64_t n_tokens : {1, 2, 3, 4, 5, 9}) {
      const Data d = MakeData(type, 37, cols, n_tokens, rng);
      for (const Path& p : Paths()) {
        ScopedPath path(p);
        const auto y = RunFast(d, n_tokens, pool2);
        EXPECT_EQ(RunFast(d, n_tokens, pool1), y) << TypeName(type) << " " << p.name;
        int bad = 0;
        for (size_t i = 0; i < y.size(); ++i) {
          const double tol = 1e-4 * d.abs_sum[i] + 1e-6;
          if (!(std::fabs(y[i] - d.ref[i]) <= tol) && ++bad <= 3) {
            ADD_FAILURE() << TypeName(type) << " " << p.name << " nt " << n_tokens << " i " << i
                          << ": " << y[i] << " vs " << d.ref[i] << " (tol " << tol << ")";
          }
          // Fast vs exact: within the activation quantization error.
          EXPECT_LE(std::fabs(y[i] - d.exact[i]), 0.6 * d.q_err[i] + 1e-4 * d.abs_sum[i] + 1e-6)
              << TypeName(type) << " " << p.name << " i " << i;
        }
        EXPECT_EQ(bad, 0) << TypeName(type) << " " << p.name << " nt " << n_tokens;
      }
    }
  }
}

TEST(KernelsFastMath, ScalarAndSimdAgree) {
  if (!CpuHasAvx2Fma()) GTEST_SKIP() << "no AVX2/FMA/F16C";
  ScopedQuantMath fast(QuantMath::kFast);
  ThreadPool pool(2);
  std::mt19937 rng(11);
  for (TensorType type : kFastTypes) {
    const int64_t cols = ActBlock(type) == 32 ? 32 * 64 : 256 * 8;
    for (int64_t n_tokens : {1, 4, 7}) {
      const Data d = MakeData(type, 64, cols, n_tokens, rng);
      std::vector<float> y[2];
      for (const Path& p : Paths()) {
        ScopedPath path(p);
        y[p.simd ? 1 : 0] = RunFast(d, n_tokens, pool);
      }
      for (size_t i = 0; i < y[0].size(); ++i) {
        EXPECT_LE(std::fabs(y[0][i] - y[1][i]), 1e-5 * d.abs_sum[i] + 1e-7)
            << TypeName(type) << " nt " << n_tokens << " i " << i;
      }
    }
  }
}

// A token's result does not depend on the batch it is computed in (bit for bit).
TEST(KernelsFastMath, BatchInvariant) {
  ScopedQuantMath fast(QuantMath::kFast);
  ThreadPool pool(2);
  std::mt19937 rng(5);
  for (TensorType type : kFastTypes) {
    const int64_t cols = ActBlock(type) == 32 ? 32 * 9 : 256 * 2;
    const int64_t n = 11, rows = 21;
    const Data d = MakeData(type, rows, cols, n, rng);
    for (const Path& p : Paths()) {
      ScopedPath path(p);
      const auto all = RunFast(d, n, pool);
      for (int64_t t = 0; t < n; ++t) {
        std::vector<float> one(rows);
        MatMul(d.m, &d.x[t * cols], cols, 1, one.data(), rows, pool);
        for (int64_t r = 0; r < rows; ++r) {
          EXPECT_EQ(one[r], all[t * rows + r]) << TypeName(type) << " " << p.name << " t " << t;
        }
      }
    }
  }
}

// F32/F16/BF16 and types without an integer path compute exactly as in kExact.
TEST(KernelsFastMath, OtherTypesUnaffected) {
  ThreadPool pool(2);
  std::mt19937 rng(3);
  for (TensorType type : {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kQ4_1,
                          TensorType::kQ5_K}) {
    const auto& info = gguf::TypeInfo(type);
    const int64_t rows = 9, cols = 512;
    auto w = RandomRows(type, rows, cols, rng, true);
    const Matrix m{type, w.data(), rows, cols,
                   static_cast<size_t>(cols / info.block_size * info.type_size)};
    std::vector<float> x(3 * cols);
    std::uniform_real_distribution<float> unit(-1, 1);
    for (float& v : x) v = unit(rng);
    std::vector<float> y[2];
    for (int k = 0; k < 2; ++k) {
      ScopedQuantMath math(k == 0 ? QuantMath::kExact : QuantMath::kFast);
      y[k].resize(3 * rows);
      MatMul(m, x.data(), cols, 3, y[k].data(), rows, pool);
    }
    EXPECT_EQ(y[0], y[1]) << TypeName(type);
  }
}

}  // namespace
}  // namespace pipeinfer::kernels
