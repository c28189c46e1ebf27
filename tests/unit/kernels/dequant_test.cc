// DequantizeRow: bit-exact against naive per-element decoders on random blocks, and the decoded
// llama.cpp fixture models against the F32 original (which catches layout mistakes that a
// self-consistent random test cannot).
#include <cmath>
#include <cstdio>
#include <map>

#include <gtest/gtest.h>

#include "gguf/reader.h"
#include "kernels/kernels.h"
#include "kernels_test_util.h"
#include "testing/fixtures.h"

namespace pipeinfer::kernels {
namespace {

using gguf::TensorType;
using testing::AllTypes;
using testing::RandomRows;
using testing::RefRow;
using testing::SameFloat;
using testing::TypeName;

TEST(KernelsDequant, SupportsExactlyTheImplementedTypes) {
  for (TensorType t : AllTypes()) EXPECT_TRUE(SupportsType(t)) << TypeName(t);
  for (TensorType t : {TensorType::kQ8_1, TensorType::kQ8_K, TensorType::kI8, TensorType::kI16,
                       TensorType::kI32, TensorType::kI64, TensorType::kF64}) {
    EXPECT_FALSE(SupportsType(t)) << TypeName(t);
  }
}

TEST(KernelsDequant, RandomBlocksMatchNaiveReferenceBitExactly) {
  std::mt19937 rng(1234);
  for (TensorType t : AllTypes()) {
    const auto& info = gguf::TypeInfo(t);
    const int64_t cols = info.block_size == 1 ? 203 : info.block_size * 5;
    const int64_t rows = 40;
    const auto data = RandomRows(t, rows, cols, rng, /*moderate=*/false);
    const size_t row_bytes = static_cast<size_t>(cols / info.block_size * info.type_size);
    Matrix m{t, data.data(), rows, cols, row_bytes};
    std::vector<float> got(cols);
    int mismatches = 0;
    for (int64_t r = 0; r < rows; ++r) {
      DequantizeRow(m, r, got.data());
      const auto want = RefRow(t, data.data() + r * row_bytes, cols);
      for (int64_t c = 0; c < cols; ++c) {
        if (!SameFloat(got[c], want[c]) && ++mismatches <= 5) {
          ADD_FAILURE() << TypeName(t) << " row " << r << " col " << c << ": got " << got[c]
                        << " want " << want[c];
        }
      }
    }
    EXPECT_EQ(mismatches, 0) << TypeName(t);
  }
}

TEST(KernelsDequant, RowBytesZeroMeansPacked) {
  std::mt19937 rng(7);
  const auto data = RandomRows(TensorType::kQ4_0, 3, 64, rng, true);
  Matrix packed{TensorType::kQ4_0, data.data(), 3, 64, 0};
  std::vector<float> got(64);
  DequantizeRow(packed, 2, got.data());
  const auto want = RefRow(TensorType::kQ4_0, data.data() + 2 * 36, 64);
  for (int c = 0; c < 64; ++c) EXPECT_TRUE(SameFloat(got[c], want[c])) << c;
}

// --- fixtures ------------------------------------------------------------------------------

std::unique_ptr<gguf::GgufFile> Open(const std::string& rel) {
  auto f = gguf::GgufFile::Open(pipeinfer::testing::FixturePath(rel));
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::move(*f) : nullptr;
}

Matrix MatrixOf(const gguf::TensorInfo& t) {
  const int64_t rows = static_cast<int64_t>(t.rows());
  return Matrix{t.type, t.data, rows, static_cast<int64_t>(t.row_length()),
                static_cast<size_t>(t.n_bytes / t.rows())};
}

std::vector<float> DequantizeAll(const gguf::TensorInfo& t) {
  const Matrix m = MatrixOf(t);
  std::vector<float> out(m.rows * m.cols);
  for (int64_t r = 0; r < m.rows; ++r) DequantizeRow(m, r, out.data() + r * m.cols);
  return out;
}

// Relative rms error bounds per weight type (observed values are printed by the test).
double Bound(TensorType t) {
  switch (t) {
    case TensorType::kQ8_0:
      return 0.01;
    case TensorType::kQ6_K:
      return 0.03;
    case TensorType::kQ4_K:
      return 0.12;
    case TensorType::kQ4_0:
      return 0.12;
    default:
      return 0.0;
  }
}

TEST(KernelsDequant, QuantizedFixturesMatchTheF32Model) {
  auto f32 = Open("models/tiny-f32.gguf");
  ASSERT_NE(f32, nullptr);
  std::map<TensorType, int> seen;
  for (const char* file :
       {"models/tiny-q8_0.gguf", "models/tiny-q4_0.gguf", "models/tiny-q4_0-pure.gguf",
        "models/tiny-q4_k_m.gguf", "models/tiny-q6_k.gguf"}) {
    auto q = Open(file);
    ASSERT_NE(q, nullptr);
    for (const auto& t : q->tensors()) {
      if (t.shape.size() != 2 || t.type == TensorType::kF32) continue;
      const gguf::TensorInfo* ref = f32->FindTensor(t.name);
      ASSERT_NE(ref, nullptr) << t.name;
      ASSERT_EQ(ref->shape, t.shape);
      ASSERT_TRUE(SupportsType(t.type)) << file << " " << t.name;
      const auto got = DequantizeAll(t);
      const float* want = reinterpret_cast<const float*>(ref->data);
      double err2 = 0, ref2 = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        err2 += (got[i] - want[i]) * static_cast<double>(got[i] - want[i]);
        ref2 += want[i] * static_cast<double>(want[i]);
      }
      const double rel = std::sqrt(err2 / ref2);
      std::printf("  %-26s %-22s %-5s rel rms err %.4f\n", file + 7, t.name.c_str(),
                  TypeName(t.type).c_str(), rel);
      EXPECT_LT(rel, Bound(t.type)) << file << " " << t.name;
      EXPECT_GT(rel, 0.0) << file << " " << t.name;
      ++seen[t.type];
    }
  }
  for (TensorType t :
       {TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ4_K, TensorType::kQ6_K}) {
    EXPECT_GT(seen[t], 0) << TypeName(t);
  }
}

// The F16 fixture was made by numpy's round-to-nearest-even cast: FloatToHalf must reproduce
// every byte, and DequantizeRow must give back exactly those halves.
TEST(KernelsDequant, F16FixtureIsTheRoundedF32Model) {
  auto f32 = Open("models/tiny-f32.gguf");
  auto f16 = Open("models/tiny-f16.gguf");
  ASSERT_NE(f32, nullptr);
  ASSERT_NE(f16, nullptr);
  int tensors = 0;
  for (const auto& t : f16->tensors()) {
    if (t.type != TensorType::kF16) continue;
    const gguf::TensorInfo* ref = f32->FindTensor(t.name);
    ASSERT_NE(ref, nullptr);
    const auto got = DequantizeAll(t);
    const float* want = reinterpret_cast<const float*>(ref->data);
    int bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const uint16_t stored = testing::HalfBits(t.data + 2 * i);
      if (FloatToHalf(want[i]) != stored) ++bad;
      if (!SameFloat(got[i], pipeinfer::testing::HalfToFloat(stored))) ++bad;
    }
    EXPECT_EQ(bad, 0) << t.name;
    ++tensors;
  }
  EXPECT_GT(tensors, 10);
}

}  // namespace
}  // namespace pipeinfer::kernels
