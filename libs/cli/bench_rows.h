// The statistics of `pipeinfer bench`: requests summed into table rows (percentiles, acceptance,
// runs per request), the speedup columns, and the greedy identity check. Private to the cli
// library.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cli/bench_request.h"

namespace pipeinfer::cli {

struct Row {
  std::string label;
  size_t variant = 0;
  int concurrency = 0;                // client threads of the level; 0: the one-at-a-time run
  int requests = 0;                   // successful requests
  std::map<std::string, int> errors;  // failed requests by code name ("RESOURCE_EXHAUSTED")
  uint64_t tokens = 0;                // completion tokens of the successful requests
  double busy_s = 0;                  // summed client time of the successful requests
  // What tokens/s divides by: busy_s one at a time; under concurrency the level's wall time.
  double wall_s = 0;
  double in_flight = NAN;  // under concurrency: summed request time / wall_s
  double tok_s = NAN;
  double req_s = NAN;
  double speedup = NAN;  // tok_s / plain's at the same concurrency
  double vs_n1 = NAN;    // tok_s / the same mode's at concurrency 1
  double ttft_p50_ms = NAN, ttft_p99_ms = NAN;
  double itl_p50_ms = NAN, itl_p99_ms = NAN;
  double acceptance = NAN;
  double runs_plain = 0, runs_spec = 0, runs_cancelled = 0, runs_tombstoned = 0;  // per request
  uint64_t drafted = 0, accepted = 0;
  std::map<std::string, double> stats;  // summed pipeline counter deltas (--stats)

  int Errors() const;
};

// Linear interpolation between closest ranks; NAN for no samples.
double Percentile(std::vector<double> v, double p);

// The per-request columns over `rs` (failed requests only counted in `errors`); the rates and
// speedups are the caller's, as they depend on how the requests ran.
Row Summarize(const std::vector<const RequestResult*>& rs);

// speedup against the plain row of the same concurrency, vs_n1 against the same mode's row at
// concurrency 1; NAN where there is none.
void SetSpeedups(const std::vector<Variant>& variants, std::vector<Row>* rows);

// Greedy decoding is deterministic and batching on the stages is exact per row, so every
// successful request of a prompt (any mode, repeat or concurrency) must give the same ids. Prints
// each mismatch to stderr; true when all agree.
bool CheckIdentical(const std::vector<const RequestResult*>& rs,
                    const std::vector<Variant>& variants);

}  // namespace pipeinfer::cli
