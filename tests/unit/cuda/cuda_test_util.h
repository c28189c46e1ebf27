// Helpers of the CUDA tests: skipping without a device, a stream on device 0, copies between
// std::vector and device memory, float comparison, and a host mirror of the paged KV storage.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "cuda/cuda_ops.h"
#include "kernels/kernels.h"

// ASSERT/EXPECT that an absl::Status (or StatusOr) is OK, printing the status otherwise.
#define PI_CUDA_ASSERT_OK(expr)                                            \
  do {                                                                     \
    const ::absl::Status _st = ::pipeinfer::cuda::testing::ToStatus(expr); \
    ASSERT_TRUE(_st.ok()) << #expr << ": " << _st;                         \
  } while (0)
#define PI_CUDA_EXPECT_OK(expr)                                            \
  do {                                                                     \
    const ::absl::Status _st = ::pipeinfer::cuda::testing::ToStatus(expr); \
    EXPECT_TRUE(_st.ok()) << #expr << ": " << _st;                         \
  } while (0)

// Skips the current test (from the test body or SetUp) when there is no usable device, with the
// library's explanation as the reason.
#define PI_SKIP_WITHOUT_CUDA_DEVICE()                    \
  do {                                                   \
    const auto _n = ::pipeinfer::cuda::DeviceCount();    \
    if (!_n.ok()) GTEST_SKIP() << _n.status().message(); \
  } while (0)

namespace pipeinfer::cuda::testing {

inline absl::Status ToStatus(const absl::Status& s) { return s; }
template <typename T>
absl::Status ToStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

// Fixture of the device tests: skipped without a device, otherwise a stream on device 0.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PI_SKIP_WITHOUT_CUDA_DEVICE();
    auto s = Stream::Create(0);
    ASSERT_TRUE(s.ok()) << s.status();
    stream_ = std::move(*s);
  }

  Stream& stream() { return *stream_; }

  // A device copy of `v` (the stream is synchronized before returning).
  template <typename T>
  DeviceBuffer ToDevice(const std::vector<T>& v) {
    auto b = DeviceBuffer::Allocate(0, v.size() * sizeof(T));
    EXPECT_TRUE(b.ok()) << b.status();
    if (!b.ok()) return DeviceBuffer();
    PI_CUDA_EXPECT_OK(CopyToDevice(stream(), b->get(), v.data(), v.size() * sizeof(T)));
    PI_CUDA_EXPECT_OK(stream().Synchronize());
    return std::move(*b);
  }

  // `n` elements read back from device memory (waits for the stream first).
  template <typename T>
  std::vector<T> FromDevice(const void* d, size_t n) {
    std::vector<T> v(n);
    PI_CUDA_EXPECT_OK(stream().Synchronize());
    PI_CUDA_EXPECT_OK(CopyToHost(stream(), v.data(), d, n * sizeof(T)));
    PI_CUDA_EXPECT_OK(stream().Synchronize());
    return v;
  }

  std::unique_ptr<Stream> stream_;
};

inline std::vector<float> RandomFloats(size_t n, std::mt19937& rng, float lo = -1.0f,
                                       float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// |a - b| <= rel * |b| + abs_tol for every element (reports the first few mismatches).
inline void ExpectAllClose(const std::vector<float>& got, const std::vector<float>& want, float rel,
                           float abs_tol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool ok = std::isnan(want[i])
                        ? std::isnan(got[i])
                        : std::fabs(got[i] - want[i]) <= rel * std::fabs(want[i]) + abs_tol;
    if (!ok && bad++ < 5) {
      ADD_FAILURE() << what << "[" << i << "]: gpu " << got[i] << " cpu " << want[i];
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

// A host mirror of the device KV storage, written with the same layout rules.
struct HostKv {
  KvLayout layout;
  std::vector<uint8_t> bytes;
  size_t KeyOffset(int32_t layer, int64_t slot) const {
    return static_cast<size_t>(slot / layout.block_tokens) * layout.block_bytes() +
           static_cast<size_t>(layer) * 2 * layout.block_tokens * layout.row_bytes() +
           static_cast<size_t>(slot % layout.block_tokens) * layout.row_bytes();
  }
  size_t ValueOffset(int32_t layer, int64_t slot) const {
    return KeyOffset(layer, slot) + static_cast<size_t>(layout.block_tokens) * layout.row_bytes();
  }
  void WriteRow(size_t off, const float* v) {
    for (int32_t e = 0; e < layout.row_elems; ++e) {
      if (layout.f16) {
        const uint16_t h = kernels::FloatToHalf(v[e]);
        std::memcpy(&bytes[off + 2 * e], &h, 2);
      } else {
        std::memcpy(&bytes[off + 4 * e], &v[e], 4);
      }
    }
  }
  float Elem(size_t off, int64_t e) const {
    if (layout.f16) {
      uint16_t h;
      std::memcpy(&h, &bytes[off + 2 * e], 2);
      return kernels::HalfToFloat(h);
    }
    float f;
    std::memcpy(&f, &bytes[off + 4 * e], 4);
    return f;
  }
};

}  // namespace pipeinfer::cuda::testing
