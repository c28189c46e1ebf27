// RunScenario (bench_scenario_run.h): the scenario's model (a `gguf synth` model when asked), one
// cluster per distinct cluster configuration (rows of one cluster run together), every row through
// RunSequential / RunConcurrent (bench_run.h), then the files.
#include "cli/bench_scenario_run.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "cli/bench_request.h"
#include "cli/bench_run.h"
#include "cli/bench_scenario_cluster.h"
#include "draft_server/spec_proto.h"
#include "gguf/reader.h"

namespace pipeinfer::cli {
namespace {

namespace fs = std::filesystem;

int Fail(const std::string& msg) {
  std::cerr << "error: " << msg << "\n";
  return 1;
}

std::vector<Variant> ScenarioVariants(const std::vector<std::string>& modes) {
  std::vector<Variant> out;
  for (const std::string& m : modes) {
    if (m == "pipeinfer --no-cancel") {
      out.push_back({m, v1::SPEC_MODE_PIPEINFER, true, false});
    } else if (m == "pipeinfer --no-continuous") {
      out.push_back({m, v1::SPEC_MODE_PIPEINFER, false, true});
    } else if (m == "sync --paper-tree") {
      out.push_back({m, v1::SPEC_MODE_SYNC, false, false, true});
    } else if (m == "pipeinfer --paper-tree") {
      out.push_back({m, v1::SPEC_MODE_PIPEINFER, false, false, true});
    } else {
      out.push_back({m, draft_server::ToProto(*spec::ParseMode(m)), false, false});
    }
  }
  return out;
}

std::string KnobText(const spec::KnobSettings& k) {
  std::string s;
  for (const spec::Knob& knob : spec::Knobs()) {
    if (!k.given(knob)) continue;
    s += (s.empty() ? "" : " ") + std::string(knob.name) + "=" + spec::FormatKnob(knob, k.params());
  }
  return s;
}

// Bytes per token between stages: n_embd float32 values (the wire's default hidden dtype).
int HiddenBytes(const std::string& model) {
  auto f = gguf::GgufFile::Open(model);
  if (!f.ok()) return 0;
  auto arch = (*f)->GetString("general.architecture");
  if (!arch.ok()) return 0;
  auto n = (*f)->GetUint(*arch + ".embedding_length");
  return n.ok() ? static_cast<int>(*n) * 4 : 0;
}

// `pipeinfer up`'s flags for the cluster of `row` (ports and state added by LocalCluster).
std::vector<std::string> UpArgs(const Scenario& sc, const ScenarioRow& row,
                                const std::string& model, const std::string& draft,
                                int concurrency) {
  const ScenarioCluster& c = sc.cluster;
  std::vector<std::string> a = {"--model",
                                model,
                                "--stages",
                                absl::StrCat(row.stages),
                                "--threads",
                                absl::StrCat(c.threads),
                                "--concurrency",
                                absl::StrCat(concurrency),
                                "--health-timeout",
                                absl::StrCat(c.health_timeout_s),
                                "--emulate-run-us",
                                absl::StrCat(row.run_us),
                                "--emulate-token-us",
                                absl::StrCat(row.token_us)};
  if (!draft.empty()) {
    a.insert(a.end(),
             {"--draft-model", draft, "--mode", "pipeinfer", "--draft-noise", row.DraftNoise()});
    // Benchmark-only switches of other parts; passed only when the row uses them.
    if (row.draft_us > 0) a.insert(a.end(), {"--emulate-draft-us", absl::StrCat(row.draft_us)});
    if (c.draft_threads > 0) a.insert(a.end(), {"--draft-threads", absl::StrCat(c.draft_threads)});
  }
  if (row.link_mbps > 0) a.insert(a.end(), {"--emulate-link-mbps", absl::StrCat(row.link_mbps)});
  if (row.link_us > 0) a.insert(a.end(), {"--emulate-link-us", absl::StrCat(row.link_us)});
  for (const spec::Knob& k : spec::Knobs()) {
    if (sc.bench.knobs.given(k)) {
      a.insert(a.end(), {std::string(k.flag), spec::FormatKnob(k, sc.bench.knobs.params())});
    }
  }
  if (c.max_batch_tokens > 0)
    a.insert(a.end(), {"--max-batch-tokens", absl::StrCat(c.max_batch_tokens)});
  if (c.kv_tokens > 0) a.insert(a.end(), {"--kv-tokens", absl::StrCat(c.kv_tokens)});
  if (c.kv_memory > 0) a.insert(a.end(), {"--kv-memory", absl::StrCat(c.kv_memory)});
  return a;
}

// Tokens/s of a set of requests: over the summed client time one at a time, over the span from
// the first start to the last end under load.
void SetRate(const std::vector<const RequestResult*>& rs, bool concurrent, Row* row) {
  if (concurrent && !rs.empty()) {
    auto start = rs.front()->start, end = rs.front()->end;
    for (const RequestResult* r : rs) {
      start = std::min(start, r->start);
      end = std::max(end, r->end);
    }
    row->wall_s = std::chrono::duration<double>(end - start).count();
  } else {
    row->wall_s = row->busy_s;
  }
  if (row->wall_s > 0) row->tok_s = static_cast<double>(row->tokens) / row->wall_s;
}

ScenarioRowResult RunRow(const LocalCluster& cluster, const Scenario& sc, const ScenarioRow& row,
                         const std::vector<std::string>& prompts,
                         const std::vector<Variant>& variants) {
  ScenarioRowResult rr;
  rr.row = row;
  rr.modes = sc.bench.modes;
  BenchArgs a;
  a.router = cluster.router();
  a.draft = cluster.draft();
  a.max_tokens = sc.bench.max_tokens;
  a.repeat = sc.bench.repeat;
  a.warmup = sc.bench.warmup;
  a.knobs = sc.bench.knobs;
  a.concurrency = {row.concurrency};
  a.requests_per_level = sc.bench.requests_per_level;
  const bool concurrent = a.Concurrent();
  auto stub = v1::Router::NewStub(BenchChannel(a.router));

  std::vector<RequestResult> all;
  if (!concurrent) {
    BenchReport rep;
    rep.args = &a;
    rep.prompts = prompts;
    rep.variants = variants;
    if (RunSequential(*stub, a, &rep) != 0) rr.error = rep.error.empty() ? "failed" : rep.error;
    all = std::move(rep.sequential);
  } else {
    // One level per repeat, so that every repeat is a measurement of its own.
    BenchArgs one = a;
    one.repeat = 1;
    for (int i = 0; i < a.repeat && rr.error.empty(); ++i) {
      BenchReport rep;
      rep.args = &one;
      rep.prompts = prompts;
      rep.variants = variants;
      if (RunConcurrent(*stub, one, &rep) != 0) rr.error = rep.error.empty() ? "failed" : rep.error;
      for (LevelRun& level : rep.levels) {
        for (RequestResult& r : level.requests) {
          r.repeat = i;
          all.push_back(std::move(r));
        }
      }
    }
  }

  std::vector<const RequestResult*> ptrs;
  int failed = 0;
  for (const RequestResult& r : all) {
    ptrs.push_back(&r);
    // A full admission queue under load is counted in the errors column, not a failed row.
    if (r.status.ok() || absl::IsResourceExhausted(r.status)) continue;
    if (++failed == 1 && rr.error.empty()) rr.error = std::string(r.status.message());
  }
  if (failed > 1) rr.error = absl::StrCat(failed, " requests failed, e.g. ", rr.error);
  rr.identical = CheckIdentical(ptrs, variants);
  if (!rr.identical && rr.error.empty()) rr.error = "greedy tokens differ between modes";

  for (size_t vi = 0; vi < variants.size(); ++vi) {
    std::vector<const RequestResult*> mode_rs;
    double tok_s_sum = 0;
    int measured = 0;
    for (int i = 0; i < a.repeat; ++i) {
      std::vector<const RequestResult*> rs;
      for (const RequestResult* r : ptrs) {
        if (r->variant == vi && r->repeat == i) rs.push_back(r);
      }
      ScenarioLine line;  // also for a repeat the row did not reach: its status, no numbers
      line.mode = variants[vi].label;
      line.repeat = i;
      if (rs.empty()) {
        rr.lines.push_back(line);
        continue;
      }
      line.m = Summarize(rs);
      SetRate(rs, concurrent, &line.m);
      if (std::isfinite(line.m.tok_s)) {
        tok_s_sum += line.m.tok_s;
        ++measured;
      }
      rr.lines.push_back(line);
      mode_rs.insert(mode_rs.end(), rs.begin(), rs.end());
    }
    Row sum = Summarize(mode_rs);
    sum.label = variants[vi].label;
    sum.wall_s = 0;
    sum.tok_s = measured > 0 ? tok_s_sum / measured : NAN;
    rr.summary[sum.label] = sum;
    auto& itl = rr.itl_ms[sum.label];
    for (const RequestResult* r : mode_rs) {
      if (!r->status.ok()) continue;
      for (double s : r->itl_s) itl.push_back(s * 1e3);
    }
  }
  return rr;
}

std::string RowTitle(const ScenarioRow& r) {
  std::string s = absl::StrCat("row ", r.id);
  if (!r.group.empty()) s += " [" + r.group + "]";
  if (!r.label.empty()) s += " " + r.label;
  char buf[200];
  std::snprintf(buf, sizeof(buf), ": agreement %.2f, %d stages, %lld+%lld us, draft %lld us, ",
                r.agreement, r.stages, static_cast<long long>(r.run_us),
                static_cast<long long>(r.token_us), static_cast<long long>(r.draft_us));
  s += buf;
  if (r.link_mbps > 0 || r.link_us > 0) {
    std::snprintf(buf, sizeof(buf), "link %g Mbit/s + %lld us, ", r.link_mbps,
                  static_cast<long long>(r.link_us));
  } else {
    std::snprintf(buf, sizeof(buf), "no link emulation, ");
  }
  s += buf;
  std::snprintf(buf, sizeof(buf), "N=%d", r.concurrency);
  return s + buf;
}

bool WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  return static_cast<bool>(f);
}

// The python3 that has matplotlib: the one on PATH, else Debian's /usr/bin/python3 (a pyenv or
// venv python3 first on PATH often lacks the Debian package). Checked before anything runs.
absl::StatusOr<std::string> FindPlotPython(const std::string& plots_py) {
  std::error_code ec;
  if (!fs::is_regular_file(plots_py, ec)) {
    return absl::NotFoundError("plot script not found: " + plots_py + " (give --plots PATH)");
  }
  for (const std::string py : {"python3", "/usr/bin/python3"}) {
    if (std::system((py + " -c 'import matplotlib' >/dev/null 2>&1").c_str()) == 0) return py;
  }
  return absl::FailedPreconditionError(
      "the plots need python3 with matplotlib, found neither on PATH nor as /usr/bin/python3 "
      "(Debian: apt-get install python3-matplotlib, listed in scripts/setup.sh)");
}

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace

int RunScenario(const ScenarioArgs& args) {
  const auto t0 = std::chrono::steady_clock::now();
  ScenarioResults res;
  absl::StatusOr<Scenario> sc = LoadScenario(args.scenario, args.only);
  if (!sc.ok()) return Fail(std::string(sc.status().message()));
  res.scenario = *std::move(sc);
  const Scenario& s = res.scenario;
  res.knobs = KnobText(s.bench.knobs);
  res.planner = PlannerAvailable();

  std::string model = s.cluster.model, draft = s.cluster.draft_model;
  int hidden = 0;
  if (s.synth) {
    const auto it = s.synth->find("n_embd");
    hidden = (it == s.synth->end() ? 512 : std::atoi(it->second.c_str())) * 4;
  } else {
    hidden = HiddenBytes(model);
  }
  res.estimate_s = EstimateSeconds(s, hidden);
  std::fprintf(stderr, "scenario %s: %zu rows, %zu modes; estimated runtime %.1f min (%.0f s)%s\n",
               s.name.c_str(), s.rows.size(), s.bench.modes.size(), res.estimate_s / 60,
               res.estimate_s,
               res.planner ? "" : " (no planner built in: plain-decoding estimate)");
  if (args.estimate) return 0;
  if (args.out_dir.empty()) return Fail("--scenario needs --out-dir");

  const std::string plots_py =
      !args.plots_py.empty()
          ? args.plots_py
          : (fs::absolute(args.scenario).parent_path().parent_path() / "plots.py").string();
  const absl::StatusOr<std::string> python = FindPlotPython(plots_py);
  if (!python.ok()) return Fail(std::string(python.status().message()));
  std::error_code ec;
  fs::create_directories(args.out_dir, ec);
  if (ec) return Fail("cannot create " + args.out_dir + ": " + ec.message());
  const std::string dir = fs::absolute(args.out_dir).string();
  res.env = CollectRunEnv();
  InstallScenarioSignalGuard();

  if (s.synth) {
    model = draft = dir + "/synth.gguf";
    std::vector<std::string> synth = {"gguf", "synth", "--out", model};
    for (const auto& [k, v] : *s.synth) {
      std::string flag = "--" + k;
      std::replace(flag.begin(), flag.end(), '_', '-');
      synth.insert(synth.end(), {flag, v});
    }
    absl::StatusOr<int> rc = RunSelf(synth, dir + "/synth.log");
    if (!rc.ok() || *rc != 0)
      return Fail("`pipeinfer gguf synth` failed; see " + dir + "/synth.log");
  }

  std::vector<std::string> prompts = s.bench.prompts;
  if (prompts.empty()) {
    const auto& b = BuiltinPrompts();
    const size_t n = s.bench.n_prompts > 0 ? static_cast<size_t>(s.bench.n_prompts) : b.size();
    prompts.assign(b.begin(), b.begin() + std::min(n, b.size()));
  }
  const std::vector<Variant> variants = ScenarioVariants(s.bench.modes);
  int concurrency = 1;
  for (const ScenarioRow& r : s.rows) concurrency = std::max(concurrency, r.concurrency);

  std::unique_ptr<LocalCluster> cluster;
  std::string cluster_key, cluster_error;
  int n_cluster = 0;
  for (const ScenarioRow& row : s.rows) {
    WaitIfInterrupted();
    if (row.ClusterKey() != cluster_key) {
      if (cluster) {
        if (absl::Status st = cluster->Down(); !st.ok()) std::cerr << "error: " << st << "\n";
        cluster.reset();
      }
      cluster_key = row.ClusterKey();
      cluster_error.clear();
      const std::string k = absl::StrCat(++n_cluster);
      std::fprintf(stderr, "cluster %s: starting %d stages\n", k.c_str(), row.stages);
      auto up = LocalCluster::Up(UpArgs(s, row, model, draft, concurrency), row.stages,
                                 dir + "/state-" + k + ".json", dir + "/logs-" + k);
      if (up.ok()) {
        cluster = *std::move(up);
      } else {
        cluster_error = std::string(up.status().message());
        std::cerr << "error: cluster " << k << ": " << cluster_error << "\n";
      }
    }
    WaitIfInterrupted();
    std::fprintf(stderr, "%s\n", RowTitle(row).c_str());
    const auto r0 = std::chrono::steady_clock::now();
    ScenarioRowResult rr;
    if (cluster) {
      rr = RunRow(*cluster, s, row, prompts, variants);
    } else {
      rr.row = row;
      rr.modes = s.bench.modes;
      rr.error = "cluster did not start: " + cluster_error;
    }
    WaitIfInterrupted();  // a row cut short by a signal is not reported
    if (rr.lines.empty()) {
      // A row that measured nothing still gets its lines, with its status and no numbers.
      for (const std::string& m : s.bench.modes) {
        for (int i = 0; i < s.bench.repeat; ++i) rr.lines.push_back({m, i, Row{}});
      }
    }
    rr.predicted = PredictRow(row, s.bench, hidden);
    std::string line;
    for (const std::string& m : s.bench.modes) {
      auto it = rr.summary.find(m);
      char buf[96];
      std::snprintf(buf, sizeof(buf), "%s%s %.2f", line.empty() ? "" : ", ", m.c_str(),
                    it == rr.summary.end() ? NAN : it->second.tok_s);
      line += buf;
    }
    std::fprintf(stderr, "  tokens/s: %s (%.1f s)%s%s\n", line.c_str(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - r0).count(),
                 rr.error.empty() ? "" : "; FAILED: ", rr.error.c_str());
    res.rows.push_back(std::move(rr));
  }
  if (cluster) {
    if (absl::Status st = cluster->Down(); !st.ok()) std::cerr << "error: " << st << "\n";
    cluster.reset();
  }

  if (!WriteFile(dir + "/results.csv", ResultsCsv(res)) ||
      !WriteFile(dir + "/itl.csv", ItlCsv(res))) {
    return Fail("cannot write the CSV files in " + dir);
  }
  const std::string plot_cmd = *python + " " + Quote(plots_py) + " --csv " +
                               Quote(dir + "/results.csv") + " --itl " + Quote(dir + "/itl.csv") +
                               " --out-dir " + Quote(dir);
  std::string plot_error;
  if (FILE* p = popen(plot_cmd.c_str(), "r")) {
    char buf[512];
    while (std::fgets(buf, sizeof(buf), p)) {
      std::string f = buf;
      while (!f.empty() && (f.back() == '\n' || f.back() == '\r')) f.pop_back();
      if (!f.empty()) res.plots.push_back(f);
    }
    if (pclose(p) != 0) plot_error = "the plots failed: " + plot_cmd;
  } else {
    plot_error = "cannot run " + plot_cmd;
  }
  res.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!WriteFile(dir + "/report.md", ScenarioMarkdown(res))) {
    return Fail("cannot write " + dir + "/report.md");
  }
  std::fprintf(stderr, "wrote %s/{report.md,results.csv,itl.csv} and %zu plots in %.1f s\n",
               dir.c_str(), res.plots.size(), res.wall_s);
  if (!plot_error.empty()) return Fail(plot_error);

  bool differ = false, failed = false;
  for (const ScenarioRowResult& rr : res.rows) {
    differ |= !rr.identical;
    failed |= !rr.error.empty() && rr.identical;
  }
  if (differ) {
    std::cerr << "error: greedy tokens differ between modes in some row (see report.md)\n";
    return 2;
  }
  if (failed) return Fail("some rows failed (see report.md)");
  return 0;
}

}  // namespace pipeinfer::cli
