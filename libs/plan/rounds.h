// One request's decoding, mode by mode, as a repeating "round" (docs/planner.md, section 3): how
// long a round takes, how many tokens it commits, and how much stage time its runs occupy (which is
// what other requests feel). Pure arithmetic over Costs.
#pragma once

#include "plan/costs.h"

namespace pipeinfer::plan {

struct Round {
  double time_us = 0;        // expected duration of a round
  double tokens = 0;         // expected committed tokens per round
  double busy_us = 0;        // expected stage time per stage occupied by the round's runs
  double runs = 0;           // expected runs sent per round
  double run_tokens = 0;     // expected tokens in those runs
  double verifications = 0;  // expected runs per round whose rows commit tokens
};

struct SpecShape {
  double agreement = 0;       // alpha
  int draft_max = 1;          // k
  double draft_token_us = 0;  // cost of drafting one token: max(draft_us, draft_floor_us)
  int max_inflight = 2;       // pipeinfer: runs in flight per request
  int remaining = 63;         // tokens a request decodes after the first (truncates the geometric)
};

// Expected tokens committed by a sync round: 1 + alpha + ... + alpha^k.
double SyncTokensPerRound(double agreement, int draft_max);

// What other requests add to each stage visit of a run (both 0 for a request alone).
struct Load {
  double batched_us = 0;  // their tokens computed in the same pass: b * tokens
  double wait_us = 0;     // waiting for their pass in progress when the run arrives
  double Visit() const { return batched_us + wait_us; }
};

Round PlainRound(const Costs& c, const Load& load);
Round SyncRound(const Costs& c, const SpecShape& s, const Load& load);
Round PipeInferRound(const Costs& c, const SpecShape& s, const Load& load);

}  // namespace pipeinfer::plan
