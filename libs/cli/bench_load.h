// `pipeinfer bench --concurrency`: one level = N client threads against the router at once, each
// issuing requests back to back until the level's fixed number of requests has finished, and the
// level's statistics (aggregate tokens/s over the level's wall time). Private to the cli library.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cli/bench_args.h"
#include "cli/bench_request.h"
#include "cli/bench_rows.h"
#include "pipeinfer/v1/router.grpc.pb.h"

namespace pipeinfer::cli {

// Requests one level runs: --requests-per-level, else max(2N, prompts x --repeat), so that every
// client issues at least two requests and every prompt runs at least --repeat times.
int RequestsPerLevel(const BenchArgs& a, int concurrency, size_t n_prompts);

struct LevelRun {
  size_t variant = 0;
  int concurrency = 0;
  // In the order they were claimed: request k used prompt k mod P. Failed ones included.
  std::vector<RequestResult> requests;
  BenchClock::time_point start, end;    // the first request's start, the last one's end
  std::map<std::string, double> stats;  // --stats: pipeline counter deltas over the level

  double WallSeconds() const { return std::chrono::duration<double>(end - start).count(); }
};

// `a.warmup` unrecorded rounds of N requests at once (client i: prompt i mod P), so that each
// level starts with warm connections, caches and thread pools. A full admission queue
// (RESOURCE_EXHAUSTED) is expected under load and ignored; any other failure is returned.
absl::Status WarmLevel(v1::Router::Stub& stub, const BenchArgs& a,
                       const std::vector<std::string>& prompts, const Variant& v, int concurrency);

// Runs one level: `concurrency` client threads share one counter of `n_requests` requests; each
// claims the next request, runs it, and claims again until none is left. A failed request
// (RESOURCE_EXHAUSTED included) is recorded, not retried, and counts as finished. With `stats`
// the pipeline's counters are read before and after the level.
LevelRun RunLevel(v1::Router::Stub& stub, const BenchArgs& a,
                  const std::vector<std::string>& prompts, const std::vector<Variant>& variants,
                  size_t variant, int concurrency, int n_requests, bool stats);

// The level's table row: tokens/s and requests/s over the level's wall time (first request start
// to last end), mean requests in flight, counter deltas over the level. Speedups: SetSpeedups.
Row LevelRow(const LevelRun& level, const std::vector<Variant>& variants);

}  // namespace pipeinfer::cli
