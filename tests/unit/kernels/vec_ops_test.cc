// Vector operations against naive double-precision loops, on both code paths and on lengths
// around the vector width.
#include <cmath>
#include <limits>
#include <random>

#include <gtest/gtest.h>

#include "kernels/kernels.h"
#include "kernels_test_util.h"

namespace pipeinfer::kernels {
namespace {

using testing::Path;
using testing::Paths;
using testing::ScopedPath;

const int64_t kLengths[] = {0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 1000, 4099};

std::vector<float> RandomVec(int64_t n, std::mt19937& rng, float scale = 1.0f) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

std::vector<uint16_t> ToHalf(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = FloatToHalf(v[i]);
  return h;
}

double H(uint16_t h) { return pipeinfer::testing::HalfToFloat(h); }

TEST(KernelsVec, DotProducts) {
  std::mt19937 rng(1);
  for (const Path& p : Paths()) {
    ScopedPath scoped(p);
    for (int64_t n : kLengths) {
      const auto a = RandomVec(n, rng), b = RandomVec(n, rng);
      const auto bh = ToHalf(b);
      double want = 0, want_h = 0, abs = 0, abs_h = 0;
      for (int64_t i = 0; i < n; ++i) {
        want += static_cast<double>(a[i]) * b[i];
        abs += std::fabs(static_cast<double>(a[i]) * b[i]);
        want_h += a[i] * H(bh[i]);
        abs_h += std::fabs(a[i] * H(bh[i]));
      }
      EXPECT_NEAR(DotF32(a.data(), b.data(), n), want, 1e-6 * abs + 1e-30) << p.name << " " << n;
      EXPECT_NEAR(DotF32F16(a.data(), bh.data(), n), want_h, 1e-6 * abs_h + 1e-30)
          << p.name << " " << n;
    }
  }
}

TEST(KernelsVec, Axpy) {
  std::mt19937 rng(2);
  for (const Path& p : Paths()) {
    ScopedPath scoped(p);
    for (int64_t n : kLengths) {
      const auto x = RandomVec(n, rng);
      const auto xh = ToHalf(x);
      const auto y0 = RandomVec(n + 1, rng);  // one extra element must stay untouched
      const float s = 0.37f;
      auto y = y0, yh = y0;
      AxpyF32(s, x.data(), y.data(), n);
      AxpyF16(s, xh.data(), yh.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double want = y0[i] + static_cast<double>(s) * x[i];
        const double want_h = y0[i] + static_cast<double>(s) * H(xh[i]);
        EXPECT_NEAR(y[i], want, 2e-7 * (std::fabs(y0[i]) + std::fabs(s * x[i]))) << p.name;
        EXPECT_NEAR(yh[i], want_h, 2e-7 * (std::fabs(y0[i]) + std::fabs(s * H(xh[i])))) << p.name;
      }
      EXPECT_EQ(y[n], y0[n]);
      EXPECT_EQ(yh[n], y0[n]);
    }
  }
}

TEST(KernelsVec, RmsNorm) {
  std::mt19937 rng(3);
  for (const Path& p : Paths()) {
    ScopedPath scoped(p);
    for (int64_t n : kLengths) {
      if (n == 0) continue;
      const auto x = RandomVec(n, rng, 3.0f), w = RandomVec(n, rng);
      std::vector<float> out(n);
      RmsNorm(x.data(), w.data(), n, 1e-5f, out.data());
      double ss = 0;
      for (float v : x) ss += static_cast<double>(v) * v;
      const double scale = 1.0 / std::sqrt(ss / n + 1e-5);
      for (int64_t i = 0; i < n; ++i) {
        const double want = x[i] * scale * w[i];
        EXPECT_NEAR(out[i], want, 1e-6 * std::fabs(want) + 1e-30) << p.name << " " << n;
      }
    }
  }
}

TEST(KernelsVec, SwiGlu) {
  std::mt19937 rng(4);
  for (const Path& p : Paths()) {
    ScopedPath scoped(p);
    for (int64_t n : kLengths) {
      auto g = RandomVec(n, rng, 12.0f);
      const auto u = RandomVec(n, rng, 2.0f);
      // Include arguments where exp(-g) overflows or vanishes.
      const float extremes[] = {-100.0f, 100.0f, -88.0f, 88.0f, -87.5f, 89.0f, 0.0f, -1e-30f};
      for (int64_t i = 0; i < n && i < 8; ++i) g[i] = extremes[i];
      std::vector<float> out(n);
      SwiGlu(g.data(), u.data(), out.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double want = g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i];
        EXPECT_NEAR(out[i], want, 1e-6 * std::fabs(want) + 1e-35)
            << p.name << " g " << g[i] << " u " << u[i];
      }
    }
  }
}

TEST(KernelsVec, Softmax) {
  std::mt19937 rng(5);
  const float ninf = -std::numeric_limits<float>::infinity();
  for (const Path& p : Paths()) {
    ScopedPath scoped(p);
    for (int64_t n : kLengths) {
      if (n == 0) continue;
      auto x = RandomVec(n, rng, 20.0f);
      if (n > 3) x[1] = x[n - 1] = ninf;  // masked entries
      const auto x0 = x;                  // (x - max is rounded in float, hence 5e-6 below)
      const float lse = SoftmaxInPlace(x.data(), n);
      double max = ninf;
      for (float v : x0) max = std::max<double>(max, v);
      double sum = 0;
      for (float v : x0) sum += std::exp(v - max);
      EXPECT_NEAR(lse, max + std::log(sum), 1e-5 * (1 + std::fabs(max))) << p.name << " " << n;
      double total = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double want = std::exp(x0[i] - max) / sum;
        EXPECT_NEAR(x[i], want, 5e-6 * want + 1e-12) << p.name << " " << n << " " << i;
        if (x0[i] == ninf) {
          EXPECT_EQ(x[i], 0.0f);
        }
        total += x[i];
      }
      EXPECT_NEAR(total, 1.0, 1e-5) << p.name << " " << n;
    }
    // Everything masked: zeros, and a normalizer of -inf.
    std::vector<float> masked(11, ninf);
    EXPECT_EQ(SoftmaxInPlace(masked.data(), 11), ninf);
    for (float v : masked) EXPECT_EQ(v, 0.0f);
    float one = 3.0f;
    EXPECT_FLOAT_EQ(SoftmaxInPlace(&one, 1), 3.0f);
    EXPECT_EQ(one, 1.0f);
  }
}

}  // namespace
}  // namespace pipeinfer::kernels
