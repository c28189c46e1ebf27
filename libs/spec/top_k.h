// The draft's favourite tokens from its raw logits, for the speculation controllers.
#pragma once

#include <cstddef>
#include <span>

#include "sampling/sampling.h"

namespace pipeinfer::spec {

// Softmax (temperature 1) of raw logits as a distribution sorted by probability (ties: lower id
// first), truncated to the `k` most likely tokens: a greedy draft's picks and their confidence.
sampling::SparseDist DraftTopK(std::span<const float> logits, size_t k);

}  // namespace pipeinfer::spec
