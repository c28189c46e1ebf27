// `pipeinfer bench`'s report: the markdown (header, table, notes) and the JSON file. Private to
// the cli library.
#pragma once

#include <string>
#include <vector>

#include "cli/bench_args.h"
#include "cli/bench_cluster.h"
#include "cli/bench_env.h"
#include "cli/bench_load.h"
#include "cli/bench_request.h"
#include "cli/bench_rows.h"

namespace pipeinfer::cli {

struct BenchReport {
  const BenchArgs* args = nullptr;
  RunEnv env;
  ClusterInfo cluster;
  std::vector<std::string> prompts;
  std::vector<Variant> variants;
  bool stats = false;  // --stats, and the router answered GetClusterStats
  bool greedy = false;
  bool identical = true;  // when greedy
  std::string error;      // why the run stopped early (RunSequential, RunConcurrent)
  std::vector<Row> rows;
  // Exactly one of these holds the measured requests: one at a time, or the --concurrency levels.
  std::vector<RequestResult> sequential;
  std::vector<LevelRun> levels;

  bool Concurrent() const { return !levels.empty(); }
};

// printf-formats one number for a table cell (`fmt` has one double conversion); "—" when not
// finite.
std::string FormatCell(const char* fmt, double v);

std::string MarkdownReport(const BenchReport& r);
std::string JsonReport(const BenchReport& r);

}  // namespace pipeinfer::cli
