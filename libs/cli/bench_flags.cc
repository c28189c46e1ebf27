// `pipeinfer bench`'s command line: its flags, the speculation knobs among them from the knob
// table (spec/knob_flags.h).
#include <memory>
#include <string>

#include "cli/bench_args.h"
#include "cli/bench_commands.h"
#include "cli/bench_request.h"
#include "cli/bench_scenario_run.h"
#include "cli/client_auth.h"
#include "spec/knob_flags.h"

namespace pipeinfer::cli {

void RegisterBenchCommands(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  BenchArgs& a = *args;
  auto* b = app.add_subcommand(
      "bench",
      "Run the same prompts through the speculation modes on a running cluster (Router gRPC) and "
      "print a markdown table; with temperature 0 also check that every mode gives the same "
      "tokens (exit status 2 if not)");
  b->add_option("--router", a.router, "Router gRPC HOST:PORT (required without --scenario)");
  AddClientAuthFlags(b, &BenchAuth());
  b->add_option("--draft", a.draft,
                "Draft service HOST:PORT, to record its defaults and stages in the header "
                "(optional)");
  b->add_option("--prompts", a.prompts_file,
                "File with one prompt per line (default: 6 built-in Jane Austen openings)");
  b->add_option("--max-tokens,-n", a.max_tokens, "Completion tokens per request")
      ->check(CLI::Range(1, 1 << 20));
  b->add_option("--modes", a.modes, "Comma-separated modes: plain, sync, pipeinfer")
      ->delimiter(',')
      ->check(CLI::Validator(
          [](std::string& mode) {
            absl::StatusOr<spec::Mode> m = spec::ParseMode(mode);
            return m.ok() ? std::string() : std::string(m.status().message());
          },
          "in {plain, sync, pipeinfer}", "mode"));
  b->add_option(
       "--repeat", a.repeat,
       "Times each prompt runs in each mode (under --concurrency: the default requests per level "
       "cover every prompt this many times)")
      ->check(CLI::Range(1, 1000));
  b->add_option("--warmup", a.warmup,
                "Unrecorded rounds (first prompt through every row; under --concurrency N requests "
                "at once before each level and mode)")
      ->check(CLI::Range(0, 100));
  b->add_option("--temperature", a.temperature, "Sampling temperature (0 = greedy)");
  b->add_option("--seed", a.seed, "Sampling seed");
  // The speculation knobs of spec/knobs.h for every request (request ranges); --modes and
  // --ablations set the mode and the ablation switches per row.
  spec::KnobFlagOptions knob_flags;
  knob_flags.scope = spec::KnobScope::kRequest;
  knob_flags.skip = {"mode", "no_cancel", "no_continuous", "paper_tree"};
  spec::AddKnobFlags(*b, &a.knobs, knob_flags);
  b->add_flag("--ablations", a.ablations,
              "Also rows `pipeinfer --no-cancel`, `pipeinfer --no-continuous`, `sync --paper-tree` "
              "and `pipeinfer --paper-tree` (the paper's micro-batches)");
  b->add_flag("--stats", a.stats,
              "Query Router.GetClusterStats around each request (under --concurrency: each "
              "level) and report stage runs skipped/stopped and bytes sent");
  b->add_flag("--stop-at-eos", a.stop_at_eos,
              "End a request at EOS (default: ignore EOS so every request has max-tokens tokens)");
  b->add_option(
       "--concurrency", a.concurrency,
       "Comma-separated load levels N, e.g. 1,2,4,8,16: per level and mode, N client "
       "threads issue requests back to back (cycling through the prompts) until the "
       "level's requests have finished; one table row per mode and N with aggregate "
       "tokens/s, requests/s, TTFT/ITL p50/p99 and errors by gRPC code. Default 1 (without "
       "--requests-per-level): one request at a time, rows interleaved per prompt")
      ->delimiter(',')
      ->check(CLI::Range(1, 1024));
  b->add_option("--requests-per-level", a.requests_per_level,
                "Requests per level and mode under --concurrency, failed ones included (default "
                "max(2N, prompts x repeat))")
      ->check(CLI::Range(1, 1000000));
  b->add_option("--out", a.out, "Also write the markdown report to this file");
  b->add_option("--json", a.json_out, "Write rows and per-request data as JSON to this file");
  // A scenario file starts its own clusters (bench_scenario_run.h).
  auto sc = std::make_shared<ScenarioArgs>();
  b->add_option("--scenario", sc->scenario,
                "Scenario YAML (bench/scenarios/*.yaml): start each cluster it describes, run "
                "every row and write results.csv, itl.csv, report.md and PNG plots to --out-dir");
  b->add_option("--out-dir", sc->out_dir, "Output folder of --scenario");
  b->add_option("--only", sc->only, "With --scenario: run only this group of the scenario");
  b->add_flag("--estimate", sc->estimate,
              "With --scenario: print the estimated runtime and exit without running");
  b->add_option("--plots", sc->plots_py,
                "With --scenario: the plot script (default: plots.py in the scenario folder's "
                "parent, i.e. bench/plots.py)");
  b->final_callback([args, sc, b] {
    if (!sc->scenario.empty()) {
      // The scenario fixes the cluster and the bench settings: refuse flags that it would ignore.
      for (const CLI::Option* o : b->get_options()) {
        const std::string name = o->get_name();
        if (o->count() == 0 || name == "--help" || name == "--scenario" || name == "--out-dir" ||
            name == "--only" || name == "--estimate" || name == "--plots") {
          continue;
        }
        throw CLI::ValidationError(name, "not used with --scenario (set it in the scenario file)");
      }
      if (int rc = RunScenario(*sc)) throw CLI::RuntimeError(rc);
      return;
    }
    if (!sc->out_dir.empty() || !sc->only.empty() || sc->estimate || !sc->plots_py.empty()) {
      throw CLI::ValidationError("--out-dir/--only/--estimate/--plots", "need --scenario");
    }
    if (args->router.empty()) throw CLI::RequiredError("--router");
    if (int rc = RunBench(*args)) throw CLI::RuntimeError(rc);
  });
}

}  // namespace pipeinfer::cli
