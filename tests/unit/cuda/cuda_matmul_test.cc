// Weights and matrix products on the device against the CPU kernels (kernels::MatMul with exact
// quantized math on the same host matrix), plus the checks that run without a device.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cuda/cuda_host.h"
#include "cuda/cuda_ops.h"
#include "gguf/tensor_type.h"
#include "kernels/kernels.h"
#include "unit/cuda/cuda_test_util.h"
#include "unit/kernels/kernels_test_util.h"

namespace pipeinfer::cuda {
namespace {

using gguf::TensorType;
using testing::CudaTest;
using ::testing::HasSubstr;
using testing::RandomFloats;
namespace kt = kernels::testing;

// On a machine without a device every device test is skipped; this prints the line that the CTest
// property SKIP_REGULAR_EXPRESSION of cuda_ops_test looks for, but only when the tests that do run
// without a device all passed (so a failure there is still reported as a failure).
class NoDeviceMarker : public ::testing::Environment {
 public:
  void TearDown() override {
    if (DeviceCount().ok()) return;
    if (::testing::UnitTest::GetInstance()->failed_test_count() != 0) return;
    std::printf("cuda_ops_test: no CUDA device here; the device tests were skipped\n");
    std::fflush(stdout);
  }
};
::testing::Environment* const kNoDeviceMarker =
    ::testing::AddGlobalTestEnvironment(new NoDeviceMarker);

const std::vector<TensorType>& DeviceTypes() {
  static const std::vector<TensorType> v = {TensorType::kF32,  TensorType::kF16,  TensorType::kBF16,
                                            TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ4_K,
                                            TensorType::kQ6_K};
  return v;
}

// Types the CPU kernels decode but the device does not: converted to F16 at upload.
std::vector<TensorType> ConvertedTypes() {
  std::vector<TensorType> v;
  for (TensorType t : kt::AllTypes()) {
    if (std::find(DeviceTypes().begin(), DeviceTypes().end(), t) == DeviceTypes().end()) {
      v.push_back(t);
    }
  }
  return v;
}

// --- Without a device -------------------------------------------------------------------------

TEST(CudaNoDevice, DeviceCountExplainsMissingDevice) {
  const auto n = DeviceCount();
  if (n.ok()) GTEST_SKIP() << "a CUDA device is present (" << *n << " devices)";
  EXPECT_EQ(n.status().code(), absl::StatusCode::kFailedPrecondition) << n.status();
  EXPECT_THAT(std::string(n.status().message()), HasSubstr("no CUDA device"));
  // Everything that needs a device fails the same way.
  const auto s = Stream::Create(0);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("no CUDA device"));
  EXPECT_FALSE(UseDevice(0).ok());
}

TEST(CudaNoDevice, UploadArgumentChecks) {
  using internal::CheckUploadArgs;
  const std::vector<uint8_t> host(8 * 3 * 144);  // 8 rows of 768 Q4_K weights
  const size_t rb = 3 * 144;
  const uint8_t* h = host.data();
  EXPECT_TRUE(CheckUploadArgs(TensorType::kQ4_K, h, 8, 768, rb, 0, 8, 0, 768).ok());
  EXPECT_TRUE(CheckUploadArgs(TensorType::kQ4_K, h, 8, 768, rb, 2, 5, 256, 512).ok());
  EXPECT_TRUE(CheckUploadArgs(TensorType::kQ4_K, h, 8, 768, rb, 8, 0, 0, 768).ok());
  const auto bad = [&](TensorType t, int64_t rows, int64_t cols, size_t row_bytes, int64_t row0,
                       int64_t n_rows, int64_t col0, int64_t n_cols) {
    return CheckUploadArgs(t, h, rows, cols, row_bytes, row0, n_rows, col0, n_cols).code();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(bad(TensorType::kQ4_K, 8, 768, rb, 0, 8, 32, 256), kInvalid);   // col0 mid-block
  EXPECT_EQ(bad(TensorType::kQ4_K, 8, 768, rb, 0, 8, 0, 300), kInvalid);    // n_cols mid-block
  EXPECT_EQ(bad(TensorType::kQ4_K, 8, 768, rb, 0, 8, 512, 512), kInvalid);  // past the last col
  EXPECT_EQ(bad(TensorType::kQ4_K, 8, 768, rb, 4, 5, 0, 768), kInvalid);    // past the last row
  EXPECT_EQ(bad(TensorType::kQ4_K, 8, 768, rb, -1, 2, 0, 768), kInvalid);
  EXPECT_EQ(bad(TensorType::kQ4_K, 8, 768, rb - 1, 0, 8, 0, 768), kInvalid);  // short rows
  EXPECT_EQ(bad(TensorType::kQ4_K, 8, 700, rb, 0, 8, 0, 256), kInvalid);      // cols mid-block
  EXPECT_EQ(bad(TensorType::kQ4_0, 8, 64, 36, 0, 8, 16, 32), kInvalid);
  EXPECT_EQ(bad(TensorType::kQ8_1, 8, 64, 72, 0, 8, 0, 64), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(bad(static_cast<TensorType>(99), 8, 64, 72, 0, 8, 0, 64), kInvalid);
  EXPECT_EQ(CheckUploadArgs(TensorType::kF32, nullptr, 2, 4, 16, 0, 2, 0, 4).code(), kInvalid);
  for (TensorType t : DeviceTypes()) EXPECT_TRUE(internal::KeptOnDevice(t)) << kt::TypeName(t);
  for (TensorType t : ConvertedTypes()) EXPECT_FALSE(internal::KeptOnDevice(t)) << kt::TypeName(t);
}

// The kernels' decoders, compiled for the host, against the CPU decoders: bit-identical floats,
// and F16 bits equal to kernels::FloatToHalf of them, on the 16-byte path and the scalar one.
TEST(CudaNoDevice, DeviceDecodersMatchCpuDecodersBitForBit) {
  std::mt19937 rng(17);
  for (TensorType type : DeviceTypes()) {
    std::vector<int64_t> widths = {512};
    if (gguf::TypeInfo(type).block_size == 1) widths = {512, 100, 12, 5};
    for (int64_t cols : widths) {
      const int64_t rows = 9;
      const size_t row_bytes = *gguf::RowBytes(type, static_cast<uint64_t>(cols));
      const std::vector<uint8_t> data = kt::RandomRows(type, rows, cols, rng, /*moderate=*/false);
      const kernels::Matrix m{type, data.data(), rows, cols, row_bytes};
      std::vector<float> want(cols), got(cols);
      std::vector<uint16_t> half(cols);
      for (int64_t r = 0; r < rows; ++r) {
        kernels::DequantizeRow(m, r, want.data());
        const uint8_t* row = data.data() + r * row_bytes;
        // The mat-vec kernel's own unit decoders (16 bytes of Q4_K quants at a time).
        std::fill(got.begin(), got.end(), NAN);
        ASSERT_TRUE(internal::DecodeRowForMatVecOnHost(type, row, cols, got.data()));
        for (int64_t c = 0; c < cols; ++c) {
          ASSERT_TRUE(kt::SameFloat(got[c], want[c]))
              << kt::TypeName(type) << " cols " << cols << " row " << r << " col " << c
              << " (mat-vec units): " << got[c] << " vs " << want[c];
        }
        const bool can_align = reinterpret_cast<uintptr_t>(row) % 16 == 0 && row_bytes % 16 == 0;
        for (bool aligned : {false, can_align}) {
          std::fill(got.begin(), got.end(), NAN);
          std::fill(half.begin(), half.end(), uint16_t{0x7e00});
          ASSERT_TRUE(internal::DecodeRowOnHost(type, row, cols, aligned, got.data(), half.data()));
          for (int64_t c = 0; c < cols; ++c) {
            ASSERT_TRUE(kt::SameFloat(got[c], want[c]))
                << kt::TypeName(type) << " cols " << cols << " row " << r << " col " << c
                << (aligned ? " (16-byte path)" : "") << ": " << got[c] << " vs " << want[c];
            ASSERT_EQ(half[c], kernels::FloatToHalf(want[c]))
                << kt::TypeName(type) << " F16 of row " << r << " col " << c;
          }
        }
      }
    }
  }
  for (TensorType t : ConvertedTypes()) {
    EXPECT_FALSE(internal::DecodeRowOnHost(t, nullptr, 0, false, nullptr, nullptr));
    EXPECT_FALSE(internal::DecodeRowForMatVecOnHost(t, nullptr, 0, nullptr));
  }
}

// --- Matrix products --------------------------------------------------------------------------

struct HostMatrix {
  TensorType type;
  int64_t rows = 0, cols = 0;
  size_t row_bytes = 0;
  std::vector<uint8_t> data;
  kernels::Matrix View() const { return {type, data.data(), rows, cols, row_bytes}; }
};

HostMatrix MakeMatrix(TensorType t, int64_t rows, int64_t cols, std::mt19937& rng, bool moderate) {
  HostMatrix m{t, rows, cols, *gguf::RowBytes(t, static_cast<uint64_t>(cols)), {}};
  m.data = kt::RandomRows(t, rows, cols, rng, moderate);
  return m;
}

// The CPU result y[t * y_stride + r] and, for the tolerance, sum_c |W[r][c] * x[t][c]|.
struct CpuProduct {
  std::vector<float> y, bound;
};
CpuProduct CpuMatMul(const kernels::Matrix& m, const std::vector<float>& x, int64_t x_stride,
                     int64_t n_tokens, int64_t y_stride) {
  kernels::SetQuantMath(kernels::QuantMath::kExact);
  static kernels::ThreadPool pool(
      static_cast<int>(std::max(1u, std::min(16u, std::thread::hardware_concurrency()))));
  CpuProduct p;
  p.y.assign(static_cast<size_t>(n_tokens * y_stride), 0.0f);
  kernels::MatMul(m, x.data(), x_stride, n_tokens, p.y.data(), y_stride, pool);
  p.bound.assign(p.y.size(), 0.0f);
  std::vector<float> w(m.cols);
  for (int64_t r = 0; r < m.rows; ++r) {
    kernels::DequantizeRow(m, r, w.data());
    for (int64_t t = 0; t < n_tokens; ++t) {
      double s = 0.0;
      for (int64_t c = 0; c < m.cols; ++c) s += std::fabs(double{w[c]} * x[t * x_stride + c]);
      p.bound[t * y_stride + r] = static_cast<float>(s);
    }
  }
  return p;
}

// The mat-vec kernel's per-lane code (MatVecLane), run on the host for all 32 lanes of every row,
// against the CPU product: widths where the unrolled part, the one-unit-at-a-time part and (plain
// types) a partial last group all occur, several token counts, strided x and y, and both the
// 16-byte path and the group-by-group one. Padding columns of y must stay untouched.
TEST(CudaNoDevice, MatVecLanesMatchCpuOnHost) {
  std::mt19937 rng(23);
  for (TensorType type : DeviceTypes()) {
    const int64_t block = gguf::TypeInfo(type).block_size;
    std::vector<int64_t> widths = {512, 4864};  // Q4_K: 16 and 152 units of 32 weights
    if (block == 32) widths = {512, 1184};
    if (block == 1) widths = {1032, 1029, 100, 5};
    for (int64_t cols : widths) {
      const int64_t rows = 5;
      const size_t row_bytes = *gguf::RowBytes(type, static_cast<uint64_t>(cols));
      const std::vector<uint8_t> w = kt::RandomRows(type, rows, cols, rng, /*moderate=*/true);
      const kernels::Matrix m{type, w.data(), rows, cols, row_bytes};
      for (int n_tokens : {1, 3, 8}) {
        const int64_t x_stride = cols + 4 - cols % 4, y_stride = rows + 3;
        const auto x = RandomFloats(n_tokens * x_stride, rng);
        const CpuProduct cpu = CpuMatMul(m, x, x_stride, n_tokens, y_stride);
        for (bool aligned : {true, false}) {
          std::vector<float> y(n_tokens * y_stride, NAN);
          ASSERT_TRUE(internal::MatVecOnHost(type, w.data(), rows, cols, row_bytes, aligned,
                                             x.data(), x_stride, n_tokens, y.data(), y_stride));
          int bad = 0;
          for (int64_t t = 0; t < n_tokens; ++t) {
            for (int64_t r = 0; r < y_stride; ++r) {
              const size_t i = t * y_stride + r;
              const bool ok = r >= rows
                                  ? std::isnan(y[i])
                                  : std::fabs(y[i] - cpu.y[i]) <= 1e-5f * cpu.bound[i] + 1e-6f;
              if (!ok && bad++ < 5) {
                ADD_FAILURE() << kt::TypeName(type) << " cols " << cols << " n_tokens " << n_tokens
                              << (aligned ? " (16-byte path)" : "") << ": token " << t << " row "
                              << r << ": " << y[i] << " vs " << cpu.y[i];
              }
            }
          }
          EXPECT_EQ(bad, 0);
        }
      }
    }
  }
  float y = 0.0f;
  EXPECT_FALSE(
      internal::MatVecOnHost(TensorType::kQ5_K, nullptr, 0, 256, 176, true, &y, 256, 1, &y, 1));
  EXPECT_FALSE(internal::MatVecOnHost(TensorType::kF32, nullptr, 0, 8, 32, true, &y, 8, 9, &y, 1));
}

class CudaMatMul : public CudaTest {
 protected:
  void SetUp() override {
    CudaTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto g = GemmContext::Create(stream());
    ASSERT_TRUE(g.ok()) << g.status();
    gemm_ = std::move(*g);
  }

  DeviceMatrix Upload(const HostMatrix& m, int64_t row0, int64_t n_rows, int64_t col0,
                      int64_t n_cols) {
    auto d = UploadMatrix(stream(), m.type, m.data.data(), m.rows, m.cols, m.row_bytes, row0,
                          n_rows, col0, n_cols);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? std::move(*d) : DeviceMatrix();
  }

  // Runs MatMul on the device; y's padding columns (rows .. y_stride) start as NaN and must stay.
  std::vector<float> GpuMatMul(const DeviceMatrix& w, const std::vector<float>& x, int64_t x_stride,
                               int64_t n_tokens, int64_t y_stride) {
    DeviceBuffer dx = ToDevice(x);
    auto dy = DeviceBuffer::Allocate(0, n_tokens * y_stride * sizeof(float));
    EXPECT_TRUE(dy.ok()) << dy.status();
    if (!dy.ok()) return {};
    PI_CUDA_EXPECT_OK(Memset(stream(), dy->get(), 0xff, dy->bytes()));
    PI_CUDA_EXPECT_OK(
        MatMul(*gemm_, w, dx.as<float>(), x_stride, n_tokens, dy->as<float>(), y_stride));
    return FromDevice<float>(dy->get(), n_tokens * y_stride);
  }

  // Compares every output with the CPU's within rel * bound + 1e-6; padding must be untouched.
  void ExpectClose(const std::vector<float>& gpu, const CpuProduct& cpu, int64_t rows,
                   int64_t n_tokens, int64_t y_stride, float rel, const std::string& what) {
    ASSERT_EQ(gpu.size(), cpu.y.size()) << what;
    int reported = 0;
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t r = 0; r < y_stride; ++r) {
        const size_t i = t * y_stride + r;
        if (r >= rows) {
          EXPECT_TRUE(std::isnan(gpu[i])) << what << ": wrote padding t=" << t << " col=" << r;
          continue;
        }
        const float tol = rel * cpu.bound[i] + 1e-6f;
        if (!(std::fabs(gpu[i] - cpu.y[i]) <= tol) && reported++ < 5) {
          ADD_FAILURE() << what << ": token " << t << " row " << r << ": gpu " << gpu[i] << " cpu "
                        << cpu.y[i] << " (tolerance " << tol << ")";
        }
      }
    }
    EXPECT_EQ(reported, 0) << what << ": mismatches";
  }

  std::unique_ptr<GemmContext> gemm_;
};

TEST_F(CudaMatMul, DeviceTypesMatchCpuForEveryTokenCount) {
  std::mt19937 rng(7);
  for (TensorType type : DeviceTypes()) {
    // Plain types also get widths that are not a multiple of 8 (partial last group; for F16/BF16
    // also rows that are not 16-byte aligned). The wide ones reach the mat-vec's unrolled loop
    // (4864: 19 blocks of 256; 4868: F32 rows that stay 16-byte aligned, then a partial group).
    std::vector<int64_t> widths = {512, 4864};
    if (gguf::TypeInfo(type).block_size == 1) widths = {512, 100, 4868};
    for (int64_t cols : widths) {
      const int64_t rows = 67;  // not a multiple of the 4 rows of a mat-vec block
      const HostMatrix m = MakeMatrix(type, rows, cols, rng, /*moderate=*/true);
      const DeviceMatrix d = Upload(m, 0, rows, 0, cols);
      ASSERT_EQ(d.type, type);
      ASSERT_FALSE(d.converted_to_f16);
      for (int64_t n_tokens : {1, 3, 8, 33, 200}) {
        const int64_t x_stride = cols + (n_tokens % 2 == 1 ? 3 : 4);  // odd strides: unaligned
        const int64_t y_stride = rows + 5;
        const auto x = RandomFloats(n_tokens * x_stride, rng);
        const CpuProduct cpu = CpuMatMul(m.View(), x, x_stride, n_tokens, y_stride);
        const auto gpu = GpuMatMul(d, x, x_stride, n_tokens, y_stride);
        // Mat-vec and SGEMM: F32 math. Otherwise cuBLAS sees F16 weights and activations.
        const bool f32_math = n_tokens <= kMatVecMaxTokens || type == TensorType::kF32;
        ExpectClose(gpu, cpu, rows, n_tokens, y_stride, f32_math ? 1e-4f : 2e-3f,
                    kt::TypeName(type) + " cols " + std::to_string(cols) + " n_tokens " +
                        std::to_string(n_tokens));
      }
    }
  }
}

// With one-hot activations the mat-vec result is a weight itself: the device must decode exactly
// the floats the CPU decodes (any finite scales, not only moderate ones).
TEST_F(CudaMatMul, MatVecDecodesBitIdenticalWeights) {
  std::mt19937 rng(11);
  for (TensorType type : DeviceTypes()) {
    const int64_t rows = 37;
    // 100: the group-by-group path (F16/BF16 rows not 16-byte aligned); the others are wide
    // enough for the unrolled loop of the 16-byte path.
    std::vector<int64_t> widths = {4096};
    if (gguf::TypeInfo(type).block_size == 1) widths = {100, 1032};
    for (int64_t cols : widths) {
      const HostMatrix m = MakeMatrix(type, rows, cols, rng, /*moderate=*/false);
      const DeviceMatrix d = Upload(m, 0, rows, 0, cols);
      std::vector<float> ref(rows * cols);
      for (int64_t r = 0; r < rows; ++r) kernels::DequantizeRow(m.View(), r, &ref[r * cols]);
      int mismatches = 0;
      for (int64_t c0 = 0; c0 < cols; c0 += kMatVecMaxTokens) {
        const int64_t n_tokens = std::min<int64_t>(kMatVecMaxTokens, cols - c0);
        std::vector<float> x(n_tokens * cols, 0.0f);
        for (int64_t t = 0; t < n_tokens; ++t) x[t * cols + c0 + t] = 1.0f;
        const auto y = GpuMatMul(d, x, cols, n_tokens, rows);
        ASSERT_EQ(y.size(), static_cast<size_t>(n_tokens * rows));
        for (int64_t t = 0; t < n_tokens; ++t) {
          for (int64_t r = 0; r < rows; ++r) {
            const float want = ref[r * cols + c0 + t], got = y[t * rows + r];
            if (got != want && mismatches++ < 5) {
              ADD_FAILURE() << kt::TypeName(type) << " row " << r << " col " << c0 + t << ": gpu "
                            << got << " cpu " << want;
            }
          }
        }
      }
      EXPECT_EQ(mismatches, 0) << kt::TypeName(type) << " cols " << cols;
    }
  }
}

TEST_F(CudaMatMul, CublasPathWorksInRowTiles) {
  // 16384 columns give tiles of 2048 rows: 2115 rows need two tiles, the second a partial one.
  std::mt19937 rng(5);
  const int64_t rows = 2115, cols = 16384, n_tokens = 40;
  const HostMatrix m = MakeMatrix(TensorType::kQ4_0, rows, cols, rng, true);
  const DeviceMatrix d = Upload(m, 0, rows, 0, cols);
  const auto x = RandomFloats(n_tokens * cols, rng);
  const CpuProduct cpu = CpuMatMul(m.View(), x, cols, n_tokens, rows + 1);
  ExpectClose(GpuMatMul(d, x, cols, n_tokens, rows + 1), cpu, rows, n_tokens, rows + 1, 2e-3f,
              "q4_0 tiled");
}

TEST_F(CudaMatMul, ConvertedTypesAreF16AndMatchCpu) {
  std::mt19937 rng(3);
  for (TensorType type : ConvertedTypes()) {
    const int64_t rows = 45, cols = 512;
    const HostMatrix m = MakeMatrix(type, rows, cols, rng, true);
    const DeviceMatrix d = Upload(m, 0, rows, 0, cols);
    EXPECT_TRUE(d.converted_to_f16) << kt::TypeName(type);
    EXPECT_EQ(d.type, TensorType::kF16);
    EXPECT_EQ(d.row_bytes, static_cast<size_t>(cols) * 2);
    for (int64_t n_tokens : {1, 8, 33}) {
      const auto x = RandomFloats(n_tokens * cols, rng);
      const CpuProduct cpu = CpuMatMul(m.View(), x, cols, n_tokens, rows);
      ExpectClose(GpuMatMul(d, x, cols, n_tokens, rows), cpu, rows, n_tokens, rows, 2e-3f,
                  kt::TypeName(type) + " n_tokens " + std::to_string(n_tokens));
    }
  }
}

TEST_F(CudaMatMul, UploadsRowAndColumnSlices) {
  std::mt19937 rng(9);
  for (TensorType type :
       {TensorType::kQ4_K, TensorType::kQ8_0, TensorType::kF16, TensorType::kQ5_0}) {
    const int64_t block = gguf::TypeInfo(type).block_size;
    const int64_t rows = 40, cols = 1024;
    const HostMatrix m = MakeMatrix(type, rows, cols, rng, true);
    const bool kept = internal::KeptOnDevice(type);
    const float rel = kept ? 1e-4f : 2e-3f;
    const std::string name = kt::TypeName(type);
    for (int64_t n_tokens : {3, 33}) {
      const float tol = n_tokens <= kMatVecMaxTokens ? rel : 2e-3f;
      // Rows 8..27, all columns: the matching rows of the full CPU product.
      {
        const DeviceMatrix d = Upload(m, 8, 20, 0, cols);
        EXPECT_EQ(d.rows, 20);
        const auto x = RandomFloats(n_tokens * cols, rng);
        const CpuProduct full = CpuMatMul(m.View(), x, cols, n_tokens, rows);
        CpuProduct want;
        for (int64_t t = 0; t < n_tokens; ++t) {
          for (int64_t r = 0; r < 20; ++r) {
            want.y.push_back(full.y[t * rows + 8 + r]);
            want.bound.push_back(full.bound[t * rows + 8 + r]);
          }
        }
        ExpectClose(GpuMatMul(d, x, cols, n_tokens, 20), want, 20, n_tokens, 20, tol,
                    name + " row slice");
      }
      // Rows 5..34, columns [2 blocks or 256, + 512): the CPU product of the same sub-matrix.
      {
        const int64_t col0 = std::max<int64_t>(256, 2 * block), n_cols = 512;
        const DeviceMatrix d = Upload(m, 5, 30, col0, n_cols);
        EXPECT_EQ(d.cols, n_cols);
        kernels::Matrix sub = m.View();
        sub.data += 5 * m.row_bytes + col0 / block * gguf::TypeInfo(type).type_size;
        sub.rows = 30;
        sub.cols = n_cols;
        const auto x = RandomFloats(n_tokens * n_cols, rng);
        const CpuProduct cpu = CpuMatMul(sub, x, n_cols, n_tokens, 30);
        ExpectClose(GpuMatMul(d, x, n_cols, n_tokens, 30), cpu, 30, n_tokens, 30, tol,
                    name + " row and column slice");
      }
    }
  }
  // A column slice that starts inside a block is refused before anything is copied.
  const HostMatrix q = MakeMatrix(TensorType::kQ4_K, 4, 512, rng, true);
  const auto bad =
      UploadMatrix(stream(), q.type, q.data.data(), 4, 512, q.row_bytes, 0, 4, 32, 256);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
}

TEST_F(CudaMatMul, RejectsBadArguments) {
  std::mt19937 rng(1);
  const HostMatrix m = MakeMatrix(TensorType::kF32, 8, 64, rng, true);
  const DeviceMatrix d = Upload(m, 0, 8, 0, 64);
  DeviceBuffer x = ToDevice(std::vector<float>(64 * 4, 1.0f));
  DeviceBuffer y = ToDevice(std::vector<float>(8 * 4, 0.0f));
  EXPECT_EQ(MatMul(*gemm_, d, nullptr, 64, 1, y.as<float>(), 8).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MatMul(*gemm_, d, x.as<float>(), 32, 4, y.as<float>(), 8).code(),
            absl::StatusCode::kInvalidArgument);  // x_stride < cols
  EXPECT_EQ(MatMul(*gemm_, d, x.as<float>(), 64, 4, y.as<float>(), 4).code(),
            absl::StatusCode::kInvalidArgument);  // y_stride < rows
  EXPECT_EQ(MatMul(*gemm_, d, x.as<float>(), 64, -1, y.as<float>(), 8).code(),
            absl::StatusCode::kInvalidArgument);
  PI_CUDA_EXPECT_OK(MatMul(*gemm_, d, x.as<float>(), 64, 0, y.as<float>(), 8));  // nothing to do
  PI_CUDA_EXPECT_OK(stream().Synchronize());
}

TEST_F(CudaMatMul, UseDeviceDescribesTheDevice) {
  const auto info = UseDevice(0);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->ordinal, 0);
  EXPECT_FALSE(info->name.empty());
  EXPECT_GT(info->sm_count, 0);
  EXPECT_GT(info->total_bytes, 0u);
  EXPECT_LE(info->free_bytes, info->total_bytes);
  EXPECT_EQ(UseDevice(1 << 20).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pipeinfer::cuda
