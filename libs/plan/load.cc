#include "plan/load.h"

#include <algorithm>
#include <cmath>

namespace pipeinfer::plan {

Loaded SolveLoad(const Costs& c, int requests, const std::function<Round(const Load&)>& round_of) {
  Loaded out;
  out.round = round_of(out.load);
  if (requests <= 1) return out;
  const double others = requests - 1;
  // u: the share of a stage's time that one request's runs occupy; m: tokens per run.
  double u = 0, m = 1;
  for (int it = 0; it < 200; ++it) {
    const Round& r = out.round;
    const double u_new = r.time_us > 0 ? std::min(1.0, r.busy_us / r.time_us) : 1.0;
    m = r.runs > 0 ? r.run_tokens / r.runs : 1.0;
    u = it == 0 ? u_new : 0.7 * u + 0.3 * u_new;  // damped: the map overshoots under heavy load
    // Each other request has a run in a given pass with probability u: its tokens join the pass
    // (one run per request per pass), and a run arriving while others' pass is in progress waits
    // for the rest of it (half a pass on average).
    const double batched_tokens = others * u * m;
    const double busy = std::min(1.0, others * u);
    const double pass = c.Pass(m + batched_tokens);
    Load next;
    next.batched_us = c.token_us * batched_tokens;
    next.wait_us = 0.5 * pass * busy;
    const bool settled = std::abs(next.batched_us - out.load.batched_us) < 1e-6 &&
                         std::abs(next.wait_us - out.load.wait_us) < 1e-6;
    out.load = next;
    out.round = round_of(out.load);
    if (settled) break;
  }
  return out;
}

}  // namespace pipeinfer::plan
