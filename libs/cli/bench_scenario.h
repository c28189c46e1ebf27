// A benchmark scenario for `pipeinfer bench --scenario FILE.yaml`: the cluster to start, the bench
// settings, and the rows (values of the axes: agreement, stages, stage cost, draft cost, link,
// concurrency), read from YAML and validated key by key. The schema is described in
// bench/scenarios/README.md. Private to the cli library.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "spec/knobs.h"

namespace pipeinfer::cli {

// The values of the axes for one row of the scenario.
struct ScenarioRow {
  std::string group;       // the group it came from ("" without `groups:`)
  std::string label;       // an explicit row's `label` (may be empty)
  int id = 0;              // 1-based, in run order
  double agreement = 1.0;  // the draft's top token is the target's with this probability
  int stages = 2;
  int64_t run_us = 0;    // stage pass padding (emulate_run_us)
  int64_t token_us = 0;  // per token (emulate_token_us)
  int64_t draft_us = 0;  // draft padding per token (draft option emulate_draft_us)
  double link_mbps = 0;  // emulated link rate; 0 = no link emulation
  int64_t link_us = 0;   // emulated one-way link latency
  int concurrency = 1;

  // Rows with the same key run on the same cluster (everything but the concurrency).
  std::string ClusterKey() const;
  // The draft option draft_noise for the agreement, formatted for `up`.
  std::string DraftNoise() const;
};

struct ScenarioCluster {
  std::string model;  // absolute after loading
  std::string draft_model;
  int threads = 1;
  int max_batch_tokens = 0;
  int64_t kv_tokens = 0;
  uint64_t kv_memory = 0;
  int draft_threads = 0;  // 0: the draft service's default
  int health_timeout_s = 120;
};

struct ScenarioBench {
  std::vector<std::string> prompts;  // explicit prompts; empty: the first n_prompts built-in ones
  int n_prompts = 0;                 // 0 with no explicit prompts: every built-in prompt
  int max_tokens = 64;
  int repeat = 1;
  int warmup = 1;
  std::vector<std::string> modes = {"plain", "sync", "pipeinfer"};
  spec::KnobSettings knobs;  // request scope, sent with every request (and given to `up`)
  int requests_per_level = 0;
};

struct Scenario {
  std::string path;
  std::string text;  // the file's content, for the report
  std::string name;
  std::string description;
  ScenarioCluster cluster;
  // `gguf synth` options (n_layer, n_embd, ..., type, seed): the runner writes OUT/synth.gguf and
  // uses it as both the model and the draft model.
  std::optional<std::map<std::string, std::string>> synth;
  ScenarioBench bench;
  ScenarioRow base;
  std::vector<std::string> groups;  // group names in file order
  std::vector<ScenarioRow> rows;    // in run order (rows of one cluster together)
};

// Reads and validates a scenario. `only` (non-empty) keeps the rows of that group (an error when
// the file has no group of that name). Unknown keys, wrong types and out-of-range values are
// errors naming the file and the key's path ("axes.agreement[2]").
absl::StatusOr<Scenario> LoadScenario(const std::string& path, const std::string& only = "");

// The axes that take more than one value among `rows`, in the order agreement, stages,
// stage_cost, draft_us, link, concurrency.
std::vector<std::string> VariedAxes(const std::vector<ScenarioRow>& rows);

}  // namespace pipeinfer::cli
