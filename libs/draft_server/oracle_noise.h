// The oracle draft's noise (benchmarks only): with probability `noise`, decided by a hash of the
// sequence so that every mode and every run sees the same draft, the draft's top token stops being
// its top token. Where it goes is the rank model's choice (oracle_ranks.h).
#pragma once

#include <cstdint>
#include <span>

#include "draft_server/oracle_ranks.h"

namespace pipeinfer::draft_server {

// The hash of a whole token sequence that decides the noise for the logits after it.
uint64_t SequenceHash(std::span<const int32_t> sequence);

// Applies the noise to `logits` (the draft's logits after the hashed sequence) in place, by
// permuting logit values (which token holds which value changes). Returns the rank the original
// top token ends at: 1 when the hash said "right" (the logits are then untouched).
//   uniform: the top token trades values with a uniformly random other token;
//   demo:    the top token is demoted to rank r drawn from the calibrated P(rank | rank >= 2); the
//            tokens ranked 2..r move up one place each (the draft's favourite is the target's
//            runner-up, and so on), and all logits are divided by DemoWrongTemperature() so that
//            the draft's confidence when wrong resembles the demo draft's.
int32_t ApplyDraftNoise(std::span<float> logits, uint64_t hash, double noise, RankModel model);

}  // namespace pipeinfer::draft_server
