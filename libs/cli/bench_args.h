// `pipeinfer bench`'s arguments, shared by its flags (bench_flags.cc) and its run
// (bench_commands.cc). Private to the cli library.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "spec/knobs.h"

namespace pipeinfer::cli {

struct BenchArgs {
  std::string router;
  std::string draft;  // optional: Draft.GetInfo for the header (stages, draft model, defaults)
  std::string prompts_file;
  int max_tokens = 64;
  std::vector<std::string> modes = {"plain", "sync", "pipeinfer"};
  int repeat = 1;
  int warmup = 1;
  double temperature = 0.0;
  std::optional<uint64_t> seed;
  // The speculation knobs given (spec/knobs.h), sent with every request; the mode and the
  // ablations come from the row instead.
  spec::KnobSettings knobs;
  bool ablations = false;
  bool stats = false;
  bool stop_at_eos = false;
  std::string out;
  std::string json_out;
  // Load levels: per level N, N client threads at once (bench_load.h). The default {1} with no
  // --requests-per-level keeps the one-request-at-a-time run and its report.
  std::vector<int> concurrency = {1};
  int requests_per_level = 0;  // 0: max(2N, prompts x repeat)

  bool Concurrent() const { return requests_per_level > 0 || concurrency != std::vector<int>{1}; }
};

// Runs the benchmark; the process exit status (0, 1 on errors, 2 when greedy outputs differ).
// Under --concurrency a request refused with RESOURCE_EXHAUSTED is counted in the report but is
// not an error; any other failed request is (exit 1 after the report).
int RunBench(const BenchArgs& args);

}  // namespace pipeinfer::cli
