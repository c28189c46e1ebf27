// `pipeinfer bench`: the same prompts through the speculation modes (plain, sync, pipeinfer and
// its ablations) on one running cluster, through the router's gRPC API; reports a markdown table
// (tokens/s, TTFT, inter-token latency, acceptance, runs per request) and checks that greedy
// output is identical in every mode.
#pragma once

#include <CLI/CLI.hpp>

namespace pipeinfer::cli {

void RegisterBenchCommands(CLI::App& app);

}  // namespace pipeinfer::cli
