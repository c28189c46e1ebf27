// The cost primitives of the planner (docs/planner.md, section 2): a stage pass costs a + b *
// tokens, a message hop costs a fixed overhead plus the link's latency, and hidden states crossing
// a link between two stages cost their bytes over the link's rate.
#pragma once

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
};

}  // namespace pipeinfer::plan
