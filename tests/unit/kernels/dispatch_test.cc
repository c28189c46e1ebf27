// Run-time dispatch: the detected CPU features, the level cap and the path names.
#include <cstdio>

#include <gtest/gtest.h>

#include "kernels/kernels.h"
#include "kernels_test_util.h"

namespace pipeinfer::kernels {
namespace {

TEST(KernelsDispatch, FeaturesAreConsistentAndReported) {
  const CpuFeatures& f = GetCpuFeatures();
  std::printf("[ cpu      ] %s; best path %s; tested paths:%s\n", CpuFeatureString().c_str(),
              SimdLevelName(BestSimdLevel()), testing::PathsNote().c_str());
  // Each level implies the one below; the extensions need AVX-512 itself.
  if (f.avx512) {
    EXPECT_TRUE(f.avx2_fma_f16c);
  }
  if (f.avx512_vnni || f.avx512_bf16) {
    EXPECT_TRUE(f.avx512);
  }
  EXPECT_EQ(CpuHasAvx2Fma(), f.avx2_fma_f16c);
  EXPECT_GE(BestSimdLevel(), f.avx2_fma_f16c ? SimdLevel::kAvx2 : SimdLevel::kScalar);
}

TEST(KernelsDispatch, CapSelectsTheLevelAndTheName) {
  const SimdLevel best = BestSimdLevel();
  for (SimdLevel cap : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    SetMaxSimdLevel(cap);
    const SimdLevel want = cap < best ? cap : best;
    EXPECT_EQ(ActiveSimdLevel(), want);
    EXPECT_EQ(UsingSimd(), want >= SimdLevel::kAvx2);
    const std::string name = ActivePath();
    if (want == SimdLevel::kAvx512) {
      EXPECT_EQ(name, GetCpuFeatures().avx512_vnni ? "avx512-vnni" : "avx512");
    } else {
      EXPECT_EQ(name, SimdLevelName(want));
    }
  }
  SetForceScalar(true);
  EXPECT_EQ(ActiveSimdLevel(), SimdLevel::kScalar);
  SetForceScalar(false);
  EXPECT_EQ(ActiveSimdLevel(), best);
}

TEST(KernelsDispatch, ParsesLevelNames) {
  EXPECT_EQ(ParseSimdLevel("scalar"), SimdLevel::kScalar);
  EXPECT_EQ(ParseSimdLevel("portable"), SimdLevel::kScalar);
  EXPECT_EQ(ParseSimdLevel("avx2"), SimdLevel::kAvx2);
  EXPECT_EQ(ParseSimdLevel("avx512"), SimdLevel::kAvx512);
  EXPECT_FALSE(ParseSimdLevel("avx-512").has_value());
  EXPECT_FALSE(ParseSimdLevel("").has_value());
  for (SimdLevel l : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    EXPECT_EQ(ParseSimdLevel(SimdLevelName(l)), l);
  }
}

}  // namespace
}  // namespace pipeinfer::kernels
