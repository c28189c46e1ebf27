// The two ways `pipeinfer bench` runs its rows on one cluster, shared by the command
// (bench_commands.cc) and the scenario runner (bench_scenario_run.cc). Private to the cli library.
#pragma once

#include <string>
#include <vector>

#include "cli/bench_args.h"
#include "cli/bench_report.h"
#include "pipeinfer/v1/router.grpc.pb.h"

namespace pipeinfer::cli {

// The prompts used without --prompts: opening lines of Jane Austen's novels.
const std::vector<std::string>& BuiltinPrompts();

// One request at a time: `a.warmup` unrecorded rounds (the first prompt through every variant),
// then every prompt through every variant (variants interleaved per prompt) `a.repeat` times.
// Fills rep->sequential, rep->rows (one per variant) and rep->identical; the first failed request
// ends the run: its message goes to stderr and rep->error, and the result is 1.
int RunSequential(v1::Router::Stub& stub, const BenchArgs& a, BenchReport* rep);

// The `a.concurrency` levels in order; per level every variant: its warmup, then its measured
// requests. Fills rep->levels, rep->rows (one per variant and level) and rep->identical; a failed
// warmup ends the run (1, message in rep->error); failed measured requests are counted.
int RunConcurrent(v1::Router::Stub& stub, const BenchArgs& a, BenchReport* rep);

}  // namespace pipeinfer::cli
