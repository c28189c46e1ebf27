// The cost primitives of the planner (docs/planner.md, section 2): a stage pass costs a + b *
// tokens, a message hop costs a fixed overhead plus the link's latency, and hidden states crossing
// a link between two stages cost their bytes over the link's rate.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace pipeinfer::plan {

struct Costs {
  int stages = 1;
  double pass_us = 0;            // a: fixed cost of a stage pass
  double token_us = 0;           // b: added cost per token in a pass
  double hop_us = 0;             // h + link latency: fixed cost of one message hop
  double wire_us_per_token = 0;  // hidden bytes * 8 / link rate (0 = infinite link)

  double Pass(double tokens) const { return pass_us + token_us * tokens; }
  // Time a run of `tokens` spends on one link between two stages (serialized on the wire).
  double Wire(double tokens) const { return wire_us_per_token * tokens; }
  // From sending a run of `tokens` to its result at the controller, when each stage visit also
  // costs `extra_us` (batched tokens of other requests, waiting for a pass in progress): S passes,
  // S + 1 hops (to stage 0, between the stages, back) and S - 1 transfers of hidden states.
  double Latency(double tokens, double extra_us) const {
    return stages * (Pass(tokens) + extra_us) + (stages + 1) * hop_us + (stages - 1) * Wire(tokens);
  }
  // A prefill of `tokens` sent as `runs` runs of ceil(tokens / runs) tokens, back to back: a stage
  // takes one run of a request per pass, so the runs follow each other through the stages, each one
  // slot behind (a slot: a pass, or the transfer on a link where that is longer). From sending the
  // first run to the last one's result (which gives the first token).
  double PrefillLatency(double tokens, int runs, double extra_us) const {
    const double chunk = std::ceil(tokens / runs);
    return Latency(chunk, extra_us) + (runs - 1) * std::max(Pass(chunk) + extra_us, Wire(chunk));
  }
};

// The number of runs that minimises PrefillLatency for a prompt of `tokens` (>= 1) when a run holds
// at most `max_run_tokens`: splitting pays when the per-token cost dominates the fixed cost of a
// pass (each extra run costs one more fixed cost, and shortens every pass of the others). Ties go
// to fewer runs; at most kMaxPrefillRuns runs beyond the least the run size allows.
inline constexpr int kMaxPrefillRuns = 64;
inline int BestPrefillRuns(const Costs& c, uint32_t tokens, uint32_t max_run_tokens,
                           double extra_us = 0) {
  const uint32_t cap = std::max<uint32_t>(max_run_tokens, 1);
  const int least = static_cast<int>((std::max<uint32_t>(tokens, 1) + cap - 1) / cap);
  const int most = static_cast<int>(
      std::min<uint32_t>(std::max<uint32_t>(tokens, 1), least + kMaxPrefillRuns - 1));
  int best = least;
  double best_us = c.PrefillLatency(tokens, least, extra_us);
  for (int k = least + 1; k <= most; ++k) {
    const double us = c.PrefillLatency(tokens, k, extra_us);
    if (us < best_us) {
      best_us = us;
      best = k;
    }
  }
  return best;
}

}  // namespace pipeinfer::plan
