// The activation quantizers of the integer MatMul path (Q8_0, Q8_1, Q8_K) on every kernel path:
// on finite inputs, equal to the naive reference (qdot_reference.h: llama.cpp's rules, written
// with nearbyint and plain loops); on any input (NaN, infinity, ties of magnitude, blocks of
// zeros), every SIMD path byte-identical to the portable one. Prints the paths it ran.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/act_quant.h"
#include "kernels/qdot.h"
#include "kernels_test_util.h"
#include "qdot_reference.h"

namespace pipeinfer::kernels {
namespace {

using gguf::TensorType;
using testing::Path;
using testing::ScopedPath;

constexpr int64_t kN = 1024;  // four Q8_K blocks, 32 Q8_0 blocks

struct Out {
  std::vector<int8_t> qs = std::vector<int8_t>(kN);
  std::vector<float> d = std::vector<float>(kN / 32);
  std::vector<float> s = std::vector<float>(kN / 32);
  std::vector<int16_t> bsums = std::vector<int16_t>(kN / 16);
};

// act: 0 Q8_0, 1 Q8_1, 2 Q8_K.
Out Quantize(int act, const std::vector<float>& x) {
  Out o;
  if (act == 0) internal::QuantizeQ8_0(x.data(), kN, o.qs.data(), o.d.data());
  if (act == 1) internal::QuantizeQ8_1(x.data(), kN, o.qs.data(), o.d.data(), o.s.data());
  if (act == 2) internal::QuantizeQ8_K(x.data(), kN, o.qs.data(), o.d.data(), o.bsums.data());
  return o;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), 4 * a.size()) == 0;
}

// Inputs: normal values; magnitude ties of opposite sign (Q8_K keeps the first); a block of zeros;
// tiny and huge values; values exactly halfway between quants.
std::vector<std::vector<float>> FiniteInputs() {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::vector<float>> in;
  for (int k = 0; k < 4; ++k) {
    std::vector<float> x(kN);
    for (float& v : x) v = normal(rng) * (k == 3 ? 1e-30f : 1.0f);
    in.push_back(x);
  }
  std::vector<float> ties = in[0];
  ties[5] = -4.0f;
  ties[200] = 4.0f;  // same block of 256 as 5, same magnitude, later
  ties[300] = 4.0f;  // next Q8_K block: the positive one comes first here
  ties[301] = -4.0f;
  for (int i = 512; i < 768; ++i) ties[i] = 0.0f;  // a Q8_K block (and 8 Q8_0 blocks) of zeros
  in.push_back(ties);
  std::vector<float> half(kN);
  for (int i = 0; i < kN; ++i) half[i] = static_cast<float>(i % 32) - 15.5f;  // .5 after scaling
  in.push_back(half);
  std::vector<float> big = in[1];
  for (float& v : big) v *= 1e30f;
  in.push_back(big);
  return in;
}

std::vector<std::vector<float>> SpecialInputs() {
  std::vector<std::vector<float>> in = FiniteInputs();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (auto& x : in) {
    x[3] = nan;
    x[40] = inf;
    x[300] = -inf;
    x[600] = nan;
  }
  return in;
}

const int kActs[] = {0, 1, 2};
const TensorType kActType[] = {TensorType::kQ8_0, TensorType::kQ4_1, TensorType::kQ4_K};
const char* kActName[] = {"Q8_0", "Q8_1", "Q8_K"};

TEST(ActQuant, MatchesReferenceOnEveryPath) {
  std::printf("[ paths    ] MatchesReferenceOnEveryPath:%s\n", testing::PathsNote().c_str());
  for (const Path& path : testing::Paths()) {
    ScopedPath scoped(path);
    for (ActQuantScheme scheme : {ActQuantScheme::kLlamaCpp2023, ActQuantScheme::kLlamaCpp2024}) {
      SetActQuantScheme(scheme);
      const auto inputs = FiniteInputs();
      for (size_t k = 0; k < inputs.size(); ++k) {
        for (int act : kActs) {
          const Out o = Quantize(act, inputs[k]);
          const testing::RefActs ref =
              testing::RefQuantize(kActType[act], inputs[k].data(), kN, scheme);
          const int blk = act == 2 ? 256 : 32;
          for (int64_t i = 0; i < kN; ++i) {
            ASSERT_EQ(o.qs[i], ref.q[i])
                << path.name << " " << kActName[act] << " input " << k << " value " << i;
          }
          for (int64_t b = 0; b < kN / blk; ++b) {
            ASSERT_EQ(o.d[b], static_cast<float>(ref.d[b]))
                << path.name << " " << kActName[act] << " input " << k << " block " << b;
            if (act == 1) {
              ASSERT_EQ(o.s[b], static_cast<float>(ref.s[b])) << path.name;
            }
          }
          if (act == 2) {
            for (int64_t j = 0; j < kN / 16; ++j) {
              int sum = 0;
              for (int l = 0; l < 16; ++l) sum += ref.q[16 * j + l];
              ASSERT_EQ(o.bsums[j], sum) << path.name << " input " << k << " bsum " << j;
            }
          }
        }
      }
    }
    SetActQuantScheme(ActQuantScheme::kLlamaCpp2023);
  }
}

TEST(ActQuant, SimdPathsMatchPortableOnAnyInput) {
  if (!CpuHasAvx2Fma()) GTEST_SKIP() << "avx2 skipped: the CPU lacks AVX2/FMA/F16C";
  std::printf("[ paths    ] SimdPathsMatchPortableOnAnyInput:%s\n", testing::PathsNote().c_str());
  const auto inputs = SpecialInputs();
  for (size_t k = 0; k < inputs.size(); ++k) {
    for (int act : kActs) {
      Out portable;
      {
        ScopedPath scoped(testing::Paths()[0]);
        portable = Quantize(act, inputs[k]);
      }
      for (const Path& path : testing::Paths()) {
        if (!path.simd) continue;
        ScopedPath scoped(path);
        const Out o = Quantize(act, inputs[k]);
        EXPECT_EQ(o.qs, portable.qs) << path.name << " " << kActName[act] << " input " << k;
        EXPECT_TRUE(SameBits(o.d, portable.d)) << path.name << " " << kActName[act];
        EXPECT_TRUE(SameBits(o.s, portable.s)) << path.name << " " << kActName[act];
        EXPECT_EQ(o.bsums, portable.bsums) << path.name << " " << kActName[act];
      }
    }
  }
}

}  // namespace
}  // namespace pipeinfer::kernels
