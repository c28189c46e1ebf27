// The capacity planner behind `pipeinfer plan`: predicts tokens/s of plain, sync and pipeinfer
// decoding on a pipeline from its costs, and recommends speculation knobs. Pure arithmetic (no
// gRPC, no engine); the model is written down in docs/planner.md.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pipeinfer::plan {

struct PlanInput {
  int stages = 8;           // pipeline stages (>= 1)
  double stage_us = 10000;  // fixed cost of one stage forward pass, microseconds
  double token_us = 500;    // added cost per token in a pass, microseconds
  double draft_us = 0;      // cost of one draft forward pass per token, microseconds
  double agreement = 0.8;   // probability that the draft's top token is the target's, in [0, 1]
  int draft_max = 4;        // most draft tokens per speculative micro-batch
  double link_mbps = 0;     // link rate between consecutive processes, Mbit/s (0 = infinite)
  double link_us = 0;       // one-way latency per link, microseconds
  int hidden_bytes = 0;     // bytes sent per token between stages (n_embd x wire dtype; 0 = none)
  int concurrency = 1;      // requests generating at once
  int max_tokens = 64;      // completion tokens per request
  // Calibration and controller settings (docs/planner.md, "Constants"):
  double hop_us = 1200;          // fixed cost of one message hop (gRPC, loopback, wake-up)
  double draft_floor_us = 5000;  // least a drafted token costs: max(draft_us, this) per token
  int prompt_tokens = 20;        // prompt length (the prefill is part of every request's time)
  int max_inflight = 0;          // pipeinfer runs in flight per request; 0 = stages + 1
  int min_stages = 1;            // fewest stages the weights fit in (for the stages advice)
};

struct ModePrediction {
  std::string mode;            // "plain", "sync", "pipeinfer"
  double tokens_per_s = 0;     // aggregate over all concurrent requests
  double tokens_per_pass = 0;  // committed tokens per verification (1 for plain)
};

struct Recommendation {
  int draft_max = 4;
  double p_accept = 0.0;
  int max_inflight = 0;
  int stages = 0;
  std::string why;  // one line per recommendation, for people
  // The same reasons one by one (why = these four joined by newlines).
  std::string why_draft_max, why_p_accept, why_max_inflight, why_stages;
};

struct PlanOutput {
  std::vector<ModePrediction> modes;  // plain, sync, pipeinfer, in this order
  Recommendation recommend;
};

// INVALID_ARGUMENT for inputs out of range (each message names the field).
absl::StatusOr<PlanOutput> Predict(const PlanInput& in);

// The predictions alone (no recommendations, which evaluate the model many times).
absl::StatusOr<std::vector<ModePrediction>> PredictModes(const PlanInput& in);

// Checks every field's range; INVALID_ARGUMENT naming the field ("agreement must be in [0, 1],
// got 1.5").
absl::Status Validate(const PlanInput& in);

}  // namespace pipeinfer::plan
