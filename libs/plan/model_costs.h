// Stage and draft costs from a model's size and a node's memory bandwidth, and the bytes a token's
// hidden state takes on the wire (docs/planner.md, section 6). For `pipeinfer plan` inputs given
// as model sizes instead of measured times.
#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pipeinfer::plan {

// Bits per weight of a quantization name ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k", "q4_k",
// "q4_0"); INVALID_ARGUMENT for other names.
absl::StatusOr<double> BitsPerWeight(absl::string_view quant);

// Bytes per value of a hidden state on the wire ("f32", "f16", "bf16", "q8_0").
absl::StatusOr<double> WireBytesPerValue(absl::string_view dtype);

struct ModelSize {
  double model_gb = 0;           // the target's weights, GB (1e9 bytes)
  double draft_gb = 0;           // the draft's weights, GB (0 = no draft cost from size)
  double node_gbps = 0;          // a node's memory bandwidth, GB/s
  double token_fraction = 0.05;  // b / a: the per-token share of a pass (see docs)
  int stages = 1;
};

struct StageCosts {
  double stage_us = 0;  // a = weights per stage / bandwidth
  double token_us = 0;  // b = token_fraction * a
  double draft_us = 0;  // draft weights / bandwidth (one node reads the whole draft per token)
};

// INVALID_ARGUMENT naming the field for sizes <= 0 or out of range.
absl::StatusOr<StageCosts> CostsFromModelSize(const ModelSize& m);

}  // namespace pipeinfer::plan
