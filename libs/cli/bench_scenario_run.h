// `pipeinfer bench --scenario FILE --out-dir DIR`: starts the scenario's clusters, runs its rows
// with the bench machinery (bench_run.h), and writes results.csv, itl.csv, report.md and the PNG
// plots (bench/plots.py). The results' shape, shared by the writers. Private to the cli library.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "cli/bench_env.h"
#include "cli/bench_rows.h"
#include "cli/bench_scenario.h"

namespace pipeinfer::cli {

struct ScenarioArgs {
  std::string scenario;
  std::string out_dir;
  std::string only;       // a group of the scenario
  bool estimate = false;  // print the runtime estimate and stop
  std::string plots_py;   // default: bench/plots.py next to the scenario folder
};

// One measurement: a row's mode at one repeat (results.csv line).
struct ScenarioLine {
  std::string mode;
  int repeat = 0;
  Row m;  // tok_s, TTFT/ITL percentiles, acceptance, errors of that repeat
};

struct ScenarioRowResult {
  ScenarioRow row;
  std::string error;  // empty: every request ran
  bool identical = true;
  std::vector<std::string> modes;
  std::vector<ScenarioLine> lines;
  std::map<std::string, Row> summary;       // per mode: all repeats; tok_s = mean over repeats
  std::map<std::string, double> predicted;  // per mode the planner predicts (tokens/s)
  std::map<std::string, std::vector<double>> itl_ms;  // per mode: every ITL sample
};

struct ScenarioResults {
  Scenario scenario;
  RunEnv env;
  std::string knobs;  // "draft_max=4 p_accept=0.02"
  double estimate_s = 0;
  double wall_s = 0;
  std::vector<ScenarioRowResult> rows;
  std::vector<std::string> plots;  // PNG file names in the out dir
  bool planner = false;            // predictions available
};

// Exit status: 0; 1 on errors (a failed row, a cluster that did not start, a writer); 2 when
// greedy tokens differ between modes in some row.
int RunScenario(const ScenarioArgs& args);

// The writers (bench_csv.cc, bench_scenario_report.cc).
std::string ResultsCsv(const ScenarioResults& r);
std::string ItlCsv(const ScenarioResults& r);
std::string ScenarioMarkdown(const ScenarioResults& r);

// Planner glue (bench_predict.cc): tokens/s per mode (plain, sync, pipeinfer) for a row; empty
// when the planner is not built in or refuses the input. `hidden_bytes`: bytes per token between
// stages.
std::map<std::string, double> PredictRow(const ScenarioRow& row, const ScenarioBench& bench,
                                         int hidden_bytes);
bool PlannerAvailable();
// Seconds the scenario should take (requests from the predictions, plus cluster starts).
double EstimateSeconds(const Scenario& sc, int hidden_bytes);

}  // namespace pipeinfer::cli
