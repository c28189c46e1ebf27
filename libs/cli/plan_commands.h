// `pipeinfer plan`: the capacity planner (libs/plan, docs/planner.md). Predicts tokens/s of plain,
// sync and pipeinfer decoding on a pipeline from its costs and recommends speculation knobs.
#pragma once

#include <CLI/CLI.hpp>

namespace pipeinfer::cli {

// Adds:
//   plan --stages S (--stage-us A --token-us B | --model-gb G|--params-b P --quant Q
//        --node-gbps BW [--token-fraction F]) [--draft-us D | --draft-gb G|--draft-params-b P]
//        --agreement X --draft-max K [--link-mbps R --link-us L (--hidden-bytes B | --n-embd N
//        [--wire-dtype f16])] [--concurrency N] [--max-tokens M] [calibration flags]
//   prints "plain 10.4", "sync 24.4", "pipeinfer 33.6" (tokens/s, one decimal), then one line per
//   recommendation (draft_max, p_accept, max_inflight, stages) with its reason.
// Errors print "error: ..." to stderr and exit with status 1.
void RegisterPlanCommands(CLI::App& app);

}  // namespace pipeinfer::cli
