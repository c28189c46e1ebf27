// QuantMath::kFast: MatMul of quantized weights with activations quantized to Q8_0 / Q8_1 / Q8_K
// and integer dot products, for every type with an integer path. Checked against a naive
// reference (qdot_reference.h: activations quantized as llama.cpp specifies, integer sums in int64,
// scaled in double); the portable and AVX2 paths against each other; the result's independence of
// batch size and thread count; extreme quants (activation quants of -128, largest weights); and
// the distance to the exact numerics (bounded by the activation rounding). Each test prints the
// paths it ran; a path the CPU lacks is skipped with a note.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/act_quant.h"
#include "kernels/kernels.h"
#include "kernels_test_util.h"
#include "qdot_reference.h"

namespace pipeinfer::kernels {
namespace {

using gguf::TensorType;
using testing::ActBlock;
using testing::Path;
using testing::Paths;
using testing::RandomRows;
using testing::RefActs;
using testing::RefDot;
using testing::RefIntegerDot;
using testing::RefQuantize;
using testing::RefRow;
using testing::ScopedPath;
using testing::ScopedQuantMath;
using testing::TypeName;

class ScopedScheme {
 public:
  explicit ScopedScheme(ActQuantScheme s) : old_(GetActQuantScheme()) { SetActQuantScheme(s); }
  ~ScopedScheme() { SetActQuantScheme(old_); }

 private:
  ActQuantScheme old_;
};

const ActQuantScheme kSchemes[] = {ActQuantScheme::kLlamaCpp2023, ActQuantScheme::kLlamaCpp2024};

const TensorType kFastTypes[] = {
    TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ4_1, TensorType::kQ5_0, TensorType::kQ5_1,
    TensorType::kQ2_K, TensorType::kQ3_K, TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K};

// The paths this CPU runs, printed once per test (with a note for the paths it lacks).
std::vector<Path> RunPaths(const char* test) {
  std::printf("[ paths    ] %s:%s\n", test, testing::PathsNote().c_str());
  return Paths();
}

struct Data {
  std::vector<uint8_t> w;
  Matrix m;
  std::vector<float> x;
  std::vector<double> ref;      // fast-path reference [t][r]
  std::vector<double> mag;      // its sum of |terms|
  std::vector<double> exact;    // exact product [t][r]
  std::vector<double> abs_sum;  // sum |w x|
  std::vector<double> q_err;    // bound on |ref - exact| from the activation rounding
};

// Random weights (moderate f16 factors) of `type`, with every other byte set to `fill` when it is
// >= 0, times `x` (n_tokens rows of cols), or random normal activations when x is empty. The
// reference quantizes the activations with the scheme in effect (GetActQuantScheme).
Data MakeData(TensorType type, int64_t rows, int64_t cols, int64_t n_tokens, std::mt19937& rng,
              std::vector<float> x = {}, int fill = -1) {
  Data d;
  const auto& info = gguf::TypeInfo(type);
  d.w = RandomRows(type, rows, cols, rng, /*moderate=*/true);
  if (fill >= 0) {
    const std::vector<int> halves = gguf::HalfFieldOffsets(type);
    for (size_t b = 0; b < d.w.size(); b += info.type_size) {
      for (int i = 0; i < static_cast<int>(info.type_size); ++i) {
        if (std::find(halves.begin(), halves.end(), i) == halves.end() &&
            std::find(halves.begin(), halves.end(), i - 1) == halves.end()) {
          d.w[b + i] = static_cast<uint8_t>(fill);
        }
      }
    }
  }
  d.m = Matrix{type, d.w.data(), rows, cols,
               static_cast<size_t>(cols / info.block_size * info.type_size)};
  d.x = std::move(x);
  if (d.x.empty()) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    d.x.resize(n_tokens * cols);
    for (float& v : d.x) v = normal(rng);
  }
  const int blk = ActBlock(type);
  d.ref.assign(n_tokens * rows, 0);
  d.mag = d.exact = d.abs_sum = d.q_err = d.ref;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const RefActs a = RefQuantize(type, &d.x[t * cols], cols, GetActQuantScheme());
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* row = d.m.data + r * d.m.row_bytes;
      const RefDot dot = RefIntegerDot(type, row, cols, a);
      const std::vector<float> w = RefRow(type, row, cols);
      double e = 0, abs = 0, err = 0;
      for (int64_t i = 0; i < cols; ++i) {
        e += static_cast<double>(w[i]) * d.x[t * cols + i];
        abs += std::fabs(static_cast<double>(w[i]) * d.x[t * cols + i]);
        err += std::fabs(w[i]) * std::fabs(a.d[i / blk]);  // |x - d q| <= |d| (clamp), < 0.6 |d|
      }
      d.ref[t * rows + r] = dot.value;
      d.mag[t * rows + r] = dot.magnitude;
      d.exact[t * rows + r] = e;
      d.abs_sum[t * rows + r] = abs;
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

// The float scaling of exact integer sums: a few roundings per block of terms of size <= mag.
double RefTolerance(const Data& d, size_t i) { return 1e-5 * d.mag[i] + 1e-6; }

TEST(KernelsFastMath, MatchesQuantizedReferenceOnEveryPath) {
  ScopedQuantMath fast(QuantMath::kFast);
  ThreadPool pool1(1), pool2(2);
  std::mt19937 rng(7);
  const std::vector<Path> paths = RunPaths("MatchesQuantizedReferenceOnEveryPath");
  for (ActQuantScheme scheme : kSchemes) {
    ScopedScheme scoped(scheme);
    SCOPED_TRACE(ActQuantSchemeName(scheme));
    for (TensorType type : kFastTypes) {
      const int64_t cols = ActBlock(type) == 32 ? 32 * 13 : 256 * 3;
      for (int64_t n_tokens : {1, 2, 3, 4, 5, 9}) {
        const Data d = MakeData(type, 37, cols, n_tokens, rng);
        for (const Path& p : paths) {
          ScopedPath path(p);
          const auto y = RunFast(d, n_tokens, pool2);
          EXPECT_EQ(RunFast(d, n_tokens, pool1), y) << TypeName(type) << " " << p.name;
          int bad = 0;
          for (size_t i = 0; i < y.size(); ++i) {
            const double tol = RefTolerance(d, i);
            if (!(std::fabs(y[i] - d.ref[i]) <= tol) && ++bad <= 3) {
              ADD_FAILURE() << TypeName(type) << " " << p.name << " nt " << n_tokens << " i " << i
                            << ": " << y[i] << " vs " << d.ref[i] << " (tol " << tol << ")";
            }
            // Fast vs exact: within the activation quantization error.
            EXPECT_LE(std::fabs(y[i] - d.exact[i]), 0.6 * d.q_err[i] + 1e-4 * d.abs_sum[i] + tol)
                << TypeName(type) << " " << p.name << " i " << i;
          }
          EXPECT_EQ(bad, 0) << TypeName(type) << " " << p.name << " nt " << n_tokens;
        }
      }
    }
  }
}

TEST(KernelsFastMath, ScalarAndSimdAgree) {
  if (!CpuHasAvx2Fma()) GTEST_SKIP() << "avx2 skipped: the CPU lacks AVX2/FMA/F16C";
  const std::vector<Path> paths = RunPaths("ScalarAndSimdAgree");
  ScopedQuantMath fast(QuantMath::kFast);
  ThreadPool pool(2);
  std::mt19937 rng(11);
  for (TensorType type : kFastTypes) {
    const int64_t cols = ActBlock(type) == 32 ? 32 * 64 : 256 * 8;
    for (int64_t n_tokens : {1, 4, 7}) {
      const Data d = MakeData(type, 64, cols, n_tokens, rng);
      std::vector<float> scalar;
      for (const Path& p : paths) {
        ScopedPath path(p);
        const std::vector<float> y = RunFast(d, n_tokens, pool);
        if (!p.simd) {
          scalar = y;
          continue;
        }
        for (size_t i = 0; i < y.size(); ++i) {
          EXPECT_LE(std::fabs(y[i] - scalar[i]), RefTolerance(d, i))
              << TypeName(type) << " " << p.name << " nt " << n_tokens << " i " << i;
        }
      }
    }
  }
}

// A token's result does not depend on the batch it is computed in (bit for bit).
TEST(KernelsFastMath, BatchInvariant) {
  ScopedQuantMath fast(QuantMath::kFast);
  ThreadPool pool(2);
  std::mt19937 rng(5);
  const std::vector<Path> paths = RunPaths("BatchInvariant");
  for (TensorType type : kFastTypes) {
    const int64_t cols = ActBlock(type) == 32 ? 32 * 9 : 256 * 2;
    const int64_t n = 11, rows = 21;
    const Data d = MakeData(type, rows, cols, n, rng);
    for (const Path& p : paths) {
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

// Extreme quants: activation blocks whose every Q8_K quant is -128 (all x equal: the largest
// magnitude maps to -128 in the 2023 scheme; -127 in the 2024 one), or -128 next to 127 (the
// clamp), or +-127 (Q8_0/Q8_1); weight payloads
// of all-zero, all-one and alternating bits (largest and smallest quants and scales). The integer
// sums must stay exact (no int16 saturation, no sign flip of -128).
TEST(KernelsFastMath, ExtremeQuantsAreExact) {
  ScopedQuantMath fast(QuantMath::kFast);
  ThreadPool pool(1);
  std::mt19937 rng(17);
  const std::vector<Path> paths = RunPaths("ExtremeQuantsAreExact");
  for (TensorType type : kFastTypes) {
    const int64_t cols = 512, rows = 5, n = 4;
    std::vector<float> x(n * cols);
    for (int64_t i = 0; i < cols; ++i) {
      x[0 * cols + i] = -1.0f;                      // Q8_K: all -128; Q8_0: all -127
      x[1 * cols + i] = 1.0f;                       // Q8_K: all -128 (d < 0); Q8_0: all 127
      x[2 * cols + i] = i % 2 == 0 ? 1.0f : -1.0f;  // Q8_K: -128 and the clamped 127
      x[3 * cols + i] = i % 3 == 0 ? -2.0f : 1.0f;  // Q8_K: -128 and 64
    }
    for (int k = 0; k < 8; ++k) {
      const int fill = (k % 4) * 0x55;  // 0x00, 0x55, 0xaa, 0xff
      ScopedScheme scheme(kSchemes[k / 4]);
      const Data d = MakeData(type, rows, cols, n, rng, x, fill);
      for (const Path& p : paths) {
        ScopedPath path(p);
        const auto y = RunFast(d, n, pool);
        for (size_t i = 0; i < y.size(); ++i) {
          EXPECT_NEAR(y[i], d.ref[i], RefTolerance(d, i))
              << TypeName(type) << " " << p.name << " fill " << fill << " "
              << ActQuantSchemeName(kSchemes[k / 4]) << " i " << i;
        }
      }
    }
  }
}

// The library's fast and exact paths differ by no more than the activation rounding allows.
TEST(KernelsFastMath, FastPathStaysNearExactPath) {
  ThreadPool pool(2);
  std::mt19937 rng(23);
  const std::vector<Path> paths = RunPaths("FastPathStaysNearExactPath");
  for (TensorType type : kFastTypes) {
    const int64_t cols = ActBlock(type) == 32 ? 32 * 24 : 256 * 3, n = 3;
    const Data d = MakeData(type, 29, cols, n, rng);
    for (const Path& p : paths) {
      ScopedPath path(p);
      std::vector<float> y[2];
      for (int k = 0; k < 2; ++k) {
        ScopedQuantMath math(k == 0 ? QuantMath::kExact : QuantMath::kFast);
        y[k] = RunFast(d, n, pool);
      }
      for (size_t i = 0; i < y[0].size(); ++i) {
        EXPECT_LE(std::fabs(y[1][i] - y[0][i]),
                  0.6 * d.q_err[i] + 1e-4 * d.abs_sum[i] + RefTolerance(d, i))
            << TypeName(type) << " " << p.name << " i " << i;
      }
    }
  }
}

TEST(KernelsFastMath, ActQuantSchemeNamesRoundTrip) {
  for (ActQuantScheme s : kSchemes) {
    EXPECT_EQ(ParseActQuantScheme(ActQuantSchemeName(s)), s) << ActQuantSchemeName(s);
  }
  EXPECT_FALSE(ParseActQuantScheme("llamacpp").has_value());
  EXPECT_FALSE(ParseActQuantScheme("").has_value());
}

// F32/F16/BF16 (no integer path) compute exactly as in kExact.
TEST(KernelsFastMath, OtherTypesUnaffected) {
  ThreadPool pool(2);
  std::mt19937 rng(3);
  for (TensorType type : {TensorType::kF32, TensorType::kF16, TensorType::kBF16}) {
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
