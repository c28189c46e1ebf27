// report.md of the scenario runner: how it ran, every row with the modes side by side, one table
// per varied axis, the planner's predictions against the measurements, latencies, the plots and
// the scenario file itself.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <sstream>

#include "cli/bench_report.h"
#include "cli/bench_scenario_run.h"

namespace pipeinfer::cli {
namespace {

std::string Fmt(const char* fmt, double v) { return FormatCell(fmt, v); }

double TokS(const ScenarioRowResult& rr, const std::string& mode) {
  auto it = rr.summary.find(mode);
  return it == rr.summary.end() ? NAN : it->second.tok_s;
}

std::string AxisValue(const ScenarioRow& r, const std::string& axis) {
  if (axis == "agreement") return Fmt("%.2f", r.agreement);
  if (axis == "stages") return std::to_string(r.stages);
  if (axis == "stage_cost") return std::to_string(r.run_us) + " + " + std::to_string(r.token_us);
  if (axis == "draft_us") return std::to_string(r.draft_us);
  if (axis == "link") {
    if (r.link_mbps <= 0 && r.link_us <= 0) return "none";
    return (r.link_mbps > 0 ? Fmt("%g Mbit/s", r.link_mbps) : std::string("unlimited")) + ", " +
           std::to_string(r.link_us) + " us";
  }
  return std::to_string(r.concurrency);
}

const char* AxisTitle(const std::string& axis) {
  if (axis == "agreement") return "agreement";
  if (axis == "stages") return "stages";
  if (axis == "stage_cost") return "stage us + us/token";
  if (axis == "draft_us") return "draft us/token";
  if (axis == "link") return "link";
  return "concurrency";
}

bool IsPipeinfer(const std::string& mode) { return mode.rfind("pipeinfer", 0) == 0; }

// Mode columns side by side, then each mode's speedup vs plain and the pipeinfer modes' vs sync.
struct ModeColumns {
  std::vector<std::string> modes;
  bool plain = false, sync = false;

  explicit ModeColumns(const std::vector<std::string>& m) : modes(m) {
    plain = std::find(m.begin(), m.end(), "plain") != m.end();
    sync = std::find(m.begin(), m.end(), "sync") != m.end();
  }
  void Header(std::ostream& md, std::string* rule) const {
    for (const auto& m : modes) {
      md << " " << m << " tok/s |";
      *rule += "--:|";
    }
    for (const auto& m : modes) {
      if (plain && m != "plain") {
        md << " " << m << " / plain |";
        *rule += "--:|";
      }
    }
    for (const auto& m : modes) {
      if (sync && IsPipeinfer(m)) {
        md << " " << m << " / sync |";
        *rule += "--:|";
      }
    }
  }
  void Cells(std::ostream& md, const ScenarioRowResult& rr) const {
    for (const auto& m : modes) md << " " << Fmt("%.2f", TokS(rr, m)) << " |";
    for (const auto& m : modes) {
      if (plain && m != "plain") md << " " << Fmt("%.2fx", TokS(rr, m) / TokS(rr, "plain")) << " |";
    }
    for (const auto& m : modes) {
      if (sync && IsPipeinfer(m)) md << " " << Fmt("%.2fx", TokS(rr, m) / TokS(rr, "sync")) << " |";
    }
  }
};

void Header(std::ostream& md, const ScenarioResults& res) {
  const Scenario& s = res.scenario;
  md << "# Scenario `" << s.name << "`\n\n";
  if (!s.description.empty()) md << s.description << "\n\n";
  md << "- command: `" << res.env.command << "`\n";
  md << "- date: " << res.env.date << "\n";
  md << "- commit: " << res.env.commit << "\n";
  md << "- machine: " << res.env.cpu << ", nproc " << res.env.nproc << "\n";
  md << "- wall time: " << Fmt("%.1f", res.wall_s)
     << " s (estimated before the run: " << Fmt("%.1f", res.estimate_s) << " s)\n";
  if (s.synth) {
    md << "- model: a `pipeinfer gguf synth` model (";
    bool first = true;
    for (const auto& [k, v] : *s.synth) {
      md << (first ? "" : ", ") << k << " " << v;
      first = false;
    }
    md << "), also its own draft model with draft_noise = 1 - agreement\n";
  } else {
    md << "- model: " << s.cluster.model << "\n";
    if (!s.cluster.draft_model.empty()) {
      md << "- draft model: " << s.cluster.draft_model
         << " (draft_noise = 1 - agreement: with noise 0 the draft is the model as trained)\n";
    }
  }
  const ScenarioBench& b = s.bench;
  md << "- requests: " << (b.prompts.empty() ? b.n_prompts : static_cast<int>(b.prompts.size()))
     << " prompts x " << b.max_tokens << " tokens (greedy, EOS ignored), " << b.repeat
     << " repeat(s), " << b.warmup << " warmup round(s); knobs: "
     << (res.knobs.empty() ? "the draft service's defaults" : res.knobs) << "\n";
  md << "- one request at a time at N=1 (modes interleaved per prompt, tokens/s = tokens / summed "
        "request time); at N>1, N clients back to back (tokens/s = tokens / the level's wall "
        "time); tokens/s is the mean over repeats\n\n";
  md << "**Emulated timings (benchmarks only).** Stage passes are padded to stage us + us/token x "
        "tokens (`--emulate-run-us`, `--emulate-token-us`), draft passes by draft us per token "
        "(`--emulate-draft-us`), and links are rate-limited with added latency "
        "(`--emulate-link-mbps`, `--emulate-link-us`). The processes really compute, then sleep "
        "to these costs on one small machine: the numbers show the scheduling of the modes under "
        "those costs, not the speed of real hardware.\n\n";
}

void RowsTable(std::ostream& md, const ScenarioResults& res, const ModeColumns& mc) {
  md << "## All rows\n\n| row | group | label | agreement | stages | stage us + us/token | draft "
        "us/token | link | N |";
  std::string rule = "|--:|---|---|--:|--:|--:|--:|---|--:|";
  mc.Header(md, &rule);
  md << " identical | status |\n" << rule << "---|---|\n";
  for (const ScenarioRowResult& rr : res.rows) {
    const ScenarioRow& r = rr.row;
    md << "| " << r.id << " | " << r.group << " | " << r.label << " | " << AxisValue(r, "agreement")
       << " | " << r.stages << " | " << AxisValue(r, "stage_cost") << " | " << r.draft_us << " | "
       << AxisValue(r, "link") << " | " << r.concurrency << " |";
    mc.Cells(md, rr);
    md << " " << (rr.identical ? "yes" : "**no**") << " | "
       << (rr.error.empty() ? "ok" : "**" + rr.error + "**") << " |\n";
  }
  md << "\n";
}

void AxisTables(std::ostream& md, const ScenarioResults& res, const ModeColumns& mc) {
  std::vector<ScenarioRow> all;
  for (const auto& rr : res.rows) all.push_back(rr.row);
  for (const std::string& axis : VariedAxes(all)) {
    // With groups: the groups in which this axis varies; else every row.
    std::vector<const ScenarioRowResult*> rows;
    std::set<std::string> groups;
    for (const std::string& g : res.scenario.groups) {
      std::vector<ScenarioRow> in;
      for (const auto& rr : res.rows) {
        if (rr.row.group == g) in.push_back(rr.row);
      }
      const auto v = VariedAxes(in);
      if (std::find(v.begin(), v.end(), axis) != v.end()) groups.insert(g);
    }
    for (const auto& rr : res.rows) {
      if (res.scenario.groups.empty() || groups.count(rr.row.group)) rows.push_back(&rr);
    }
    if (rows.empty()) continue;
    md << "## By " << AxisTitle(axis) << "\n\n| row | " << AxisTitle(axis) << " |";
    std::string rule = "|--:|--:|";
    mc.Header(md, &rule);
    md << "\n" << rule << "\n";
    for (const ScenarioRowResult* rr : rows) {
      md << "| " << rr->row.id << " | " << AxisValue(rr->row, axis) << " |";
      mc.Cells(md, *rr);
      md << "\n";
    }
    md << "\n";
  }
}

void Predictions(std::ostream& md, const ScenarioResults& res) {
  md << "## Predicted vs measured\n\n";
  if (!res.planner) {
    md << "The planner (`libs/plan`) was not built in; no predictions.\n\n";
    return;
  }
  md << "Predictions of `pipeinfer plan` (plan::Predict) from the row's stages, costs, agreement, "
        "link, concurrency and knobs; |error| = |predicted - measured| / measured.\n\n";
  md << "| row | mode | predicted tok/s | measured tok/s | abs error |\n|--:|---|--:|--:|--:|\n";
  std::vector<double> errors;
  for (const ScenarioRowResult& rr : res.rows) {
    for (const std::string& m : rr.modes) {
      auto p = rr.predicted.find(m);
      if (p == rr.predicted.end()) continue;
      const double meas = TokS(rr, m);
      const double err = std::fabs(p->second - meas) / meas;
      if (std::isfinite(err)) errors.push_back(err);
      md << "| " << rr.row.id << " | " << m << " | " << Fmt("%.2f", p->second) << " | "
         << Fmt("%.2f", meas) << " | " << Fmt("%.1f %%", err * 100) << " |\n";
    }
  }
  double median = NAN;
  if (!errors.empty()) {
    std::sort(errors.begin(), errors.end());
    const size_t n = errors.size();
    median = n % 2 ? errors[n / 2] : (errors[n / 2 - 1] + errors[n / 2]) / 2;
  }
  md << "\nmedian |error|: " << Fmt("%.1f %%", median * 100) << " over " << errors.size()
     << " predictions\n\n";
}

void Latencies(std::ostream& md, const ScenarioResults& res) {
  md << "## Latency and acceptance\n\n| row | mode | requests | errors | TTFT p50 ms | TTFT p99 ms "
        "| ITL p50 ms | ITL p99 ms | acceptance |\n|--:|---|--:|--:|--:|--:|--:|--:|--:|\n";
  for (const ScenarioRowResult& rr : res.rows) {
    for (const std::string& m : rr.modes) {
      auto it = rr.summary.find(m);
      if (it == rr.summary.end()) continue;
      const Row& r = it->second;
      md << "| " << rr.row.id << " | " << m << " | " << r.requests << " | " << r.Errors() << " | "
         << Fmt("%.1f", r.ttft_p50_ms) << " | " << Fmt("%.1f", r.ttft_p99_ms) << " | "
         << Fmt("%.2f", r.itl_p50_ms) << " | " << Fmt("%.2f", r.itl_p99_ms) << " | "
         << Fmt("%.3f", r.acceptance) << " |\n";
    }
  }
  md << "\nTTFT = client time to the first token (prefill included); ITL = gap between deltas, "
        "split evenly over the tokens of a delta; acceptance = tokens accepted / drafted.\n\n";
}

}  // namespace

std::string ScenarioMarkdown(const ScenarioResults& res) {
  std::ostringstream md;
  Header(md, res);
  const ModeColumns mc(res.scenario.bench.modes);
  RowsTable(md, res, mc);
  AxisTables(md, res, mc);
  Predictions(md, res);
  Latencies(md, res);
  if (!res.plots.empty()) {
    md << "## Plots\n\n";
    for (const std::string& p : res.plots) md << "![" << p << "](" << p << ")\n\n";
  }
  md << "## Scenario file (`" << res.scenario.path << "`)\n\n```yaml\n" << res.scenario.text;
  if (!res.scenario.text.empty() && res.scenario.text.back() != '\n') md << "\n";
  md << "```\n";
  return md.str();
}

}  // namespace pipeinfer::cli
