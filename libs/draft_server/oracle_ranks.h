// The rank model of the oracle draft (benchmarks): where a real draft puts the target's greedy
// token when the draft's own top token is a different one. Measured once on the bundled demo pair
// by `pipeinfer calibrate-draft` (docs/draft-emulation.md) and baked in here as constants.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "absl/status/statusor.h"

namespace pipeinfer::draft_server {

// How a "wrong" oracle draft places the target's top token.
enum class RankModel {
  kUniform,  // swapped with a uniformly random other token (the original --draft-noise)
  kDemo,     // demoted to a rank drawn from the demo pair's calibrated histogram
};

absl::StatusOr<RankModel> ParseRankModel(std::string_view name);
std::string_view RankModelName(RankModel model);

// Ranks lo..hi (1-based, inclusive) held the target's greedy token at this fraction of the
// measured positions. Buckets are ascending and disjoint; the last one is open-ended (hi is the
// largest rank seen).
struct RankBucket {
  int32_t lo;
  int32_t hi;
  double p;
};

// The demo pair's histogram over all ranks (rank 1 = the draft agreed), and the number of
// positions it was measured on.
std::span<const RankBucket> DemoRankBuckets();
int64_t DemoRankPositions();
// The temperature that makes a wrong oracle draft as unsure as the demo draft is when wrong: the
// mean top-1 probability of a wrong demo draft, 0.194, is the target's mean top-1 probability at
// this temperature (0.368 at temperature 1).
double DemoWrongTemperature();

// A rank >= 2 drawn from P(rank | rank >= 2) of `buckets`, by the uniform number u in [0, 1) for
// the bucket and v in [0, 1) for the rank inside it; at most n_vocab.
int32_t DrawWrongRank(std::span<const RankBucket> buckets, double u, double v, int32_t n_vocab);

}  // namespace pipeinfer::draft_server
