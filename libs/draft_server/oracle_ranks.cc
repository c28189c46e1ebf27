#include "draft_server/oracle_ranks.h"

#include <algorithm>
#include <array>
#include <string>

#include "absl/strings/str_cat.h"

namespace pipeinfer::draft_server {
namespace {

// Produced from the 17 held-out Austen chapters of models/README.md (67,243 positions; the text
// file is made as docs/draft-emulation.md says) by
//   pipeinfer calibrate-draft --target models/demo-target-q8_0.gguf
//       --draft models/demo-draft-q8_0.gguf --text austen_val.txt
// P(rank) of the target's greedy token under the draft, teacher-forced at every position.
constexpr int64_t kDemoPositions = 67243;
constexpr std::array<RankBucket, 23> kDemo = {{
    {1, 1, 0.716208},     {2, 2, 0.145755},      {3, 3, 0.052853},       {4, 4, 0.025683},
    {5, 5, 0.015065},     {6, 6, 0.009428},      {7, 7, 0.006424},       {8, 8, 0.004447},
    {9, 9, 0.003257},     {10, 10, 0.002930},    {11, 11, 0.002082},     {12, 12, 0.001547},
    {13, 13, 0.001219},   {14, 14, 0.000922},    {15, 15, 0.001100},     {16, 16, 0.000684},
    {17, 32, 0.005547},   {33, 64, 0.002826},    {65, 128, 0.001249},    {129, 256, 0.000506},
    {257, 512, 0.000134}, {513, 1024, 0.000089}, {1025, 1778, 0.000045},
}};
// The same run's "temperature bringing it to the draft's mean when wrong": dividing the target's
// logits by it brings their mean top-1 probability (0.368) down to the draft's when it is wrong
// (0.194).
constexpr double kDemoWrongTemperature = 1.499;

}  // namespace

absl::StatusOr<RankModel> ParseRankModel(std::string_view name) {
  if (name == "uniform") return RankModel::kUniform;
  if (name == "demo") return RankModel::kDemo;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown draft rank model '", std::string(name), "' (uniform or demo)"));
}

std::string_view RankModelName(RankModel model) {
  return model == RankModel::kUniform ? "uniform" : "demo";
}

std::span<const RankBucket> DemoRankBuckets() { return kDemo; }
int64_t DemoRankPositions() { return kDemoPositions; }
double DemoWrongTemperature() { return kDemoWrongTemperature; }

int32_t DrawWrongRank(std::span<const RankBucket> buckets, double u, double v, int32_t n_vocab) {
  double total = 0;
  for (const RankBucket& b : buckets) {
    if (b.hi >= 2) total += b.p * (b.hi - std::max(b.lo, 2) + 1) / (b.hi - b.lo + 1);
  }
  int32_t r = 2;
  double acc = 0;
  for (const RankBucket& b : buckets) {
    if (b.hi < 2) continue;
    const int32_t lo = std::max(b.lo, 2);
    acc += b.p * (b.hi - lo + 1) / (b.hi - b.lo + 1);
    r = lo + std::min(static_cast<int32_t>(v * (b.hi - lo + 1)), b.hi - lo);
    if (u * total < acc) break;
  }
  return std::clamp(r, 2, std::max(2, n_vocab));
}

}  // namespace pipeinfer::draft_server
