// The scenario runner's use of the capacity planner (plan/planner.h): a prediction per row, and
// the runtime estimate printed before a scenario runs. Built without the planner (its target not
// yet in the tree), predictions are empty and the estimate uses plain decoding's pipeline time.
#include <algorithm>
#include <cmath>

#include "cli/bench_scenario_run.h"

#if PIPEINFER_HAVE_PLAN
#include "plan/planner.h"
#include "spec/params.h"
#endif

namespace pipeinfer::cli {

bool PlannerAvailable() { return PIPEINFER_HAVE_PLAN != 0; }

std::map<std::string, double> PredictRow(const ScenarioRow& row, const ScenarioBench& bench,
                                         int hidden_bytes) {
  std::map<std::string, double> out;
#if PIPEINFER_HAVE_PLAN
  plan::PlanInput in;
  in.stages = row.stages;
  in.stage_us = static_cast<double>(row.run_us);
  in.token_us = static_cast<double>(row.token_us);
  in.draft_us = static_cast<double>(row.draft_us);
  in.agreement = row.agreement;
  in.draft_max = static_cast<int>(
      bench.knobs.params().draft_max != 0 ? bench.knobs.params().draft_max : spec::kPaperDraftMax);
  in.link_mbps = row.link_mbps;
  in.link_us = static_cast<double>(row.link_us);
  in.hidden_bytes = hidden_bytes;
  in.concurrency = row.concurrency;
  in.max_tokens = bench.max_tokens;
  absl::StatusOr<plan::PlanOutput> p = plan::Predict(in);
  if (!p.ok()) return out;
  for (const plan::ModePrediction& m : p->modes) out[m.mode] = m.tokens_per_s;
#else
  (void)row;
  (void)bench;
  (void)hidden_bytes;
#endif
  return out;
}

double EstimateSeconds(const Scenario& sc, int hidden_bytes) {
  const double prompts = sc.bench.prompts.empty()
                             ? (sc.bench.n_prompts > 0 ? sc.bench.n_prompts : 6)
                             : static_cast<double>(sc.bench.prompts.size());
  double total = 0;
  std::string last_cluster;
  for (const ScenarioRow& row : sc.rows) {
    if (row.ClusterKey() != last_cluster) {
      total += 4.0 + 0.5 * row.stages;  // `up` (health checks, model loads) and `down`
      last_cluster = row.ClusterKey();
    }
    const std::map<std::string, double> pred = PredictRow(row, sc.bench, hidden_bytes);
    // Without a prediction: every token crosses the pipeline once (plain decoding).
    const double pass_s = row.stages * (row.run_us + row.token_us) * 1e-6;
    const double fallback = pass_s > 0 ? 1.0 / pass_s : 50.0;
    const int n = row.concurrency;
    // Tokens per mode: the measured requests (and under load their warmup), per repeat.
    double requests = prompts * sc.bench.repeat + sc.bench.warmup;
    if (n > 1) {
      requests = sc.bench.requests_per_level > 0 ? sc.bench.requests_per_level
                                                 : std::max(2.0 * n, prompts);
      requests = (requests + sc.bench.warmup * n) * sc.bench.repeat;
    }
    for (const std::string& mode : sc.bench.modes) {
      const std::string base = mode.rfind("pipeinfer", 0) == 0 ? "pipeinfer" : mode;
      auto it = pred.find(base);
      const double tok_s = it != pred.end() && it->second > 0 ? it->second : fallback;
      // Aggregate tokens/s under load; time to first token (a prompt pass) per request.
      total += requests * sc.bench.max_tokens / tok_s + requests / n * pass_s;
    }
  }
  return total;
}

}  // namespace pipeinfer::cli
