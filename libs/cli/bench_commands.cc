// RunBench (bench_args.h): the prompts and rows, then either one request at a time (the default)
// or the --concurrency levels (bench_load.h), the greedy identity check, and the report
// (bench_report.h).
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "cli/bench_args.h"
#include "cli/bench_cluster.h"
#include "cli/bench_env.h"
#include "cli/bench_load.h"
#include "cli/bench_report.h"
#include "cli/bench_request.h"
#include "cli/bench_rows.h"
#include "cli/bench_run.h"

namespace pipeinfer::cli {
namespace {

// Opening lines of Jane Austen's novels (public domain), the demo models' training domain.
const std::vector<std::string> kBuiltinPrompts = {
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition,",
    "The family of Dashwood had long been settled in Sussex.",
    "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who,",
    "No one who had ever seen Catherine Morland in her infancy would have supposed",
    "About thirty years ago Miss Maria Ward, of Huntingdon, with only seven thousand pounds,",
};

int Fail(const std::string& msg) {
  std::cerr << "error: " << msg << "\n";
  return 1;
}

// Fail, and the message kept in the report for the scenario runner.
int FailRun(BenchReport* rep, const std::string& msg) {
  rep->error = msg;
  return Fail(msg);
}

// A live progress line, on terminals only.
bool Progress() { return isatty(STDERR_FILENO); }

}  // namespace

const std::vector<std::string>& BuiltinPrompts() { return kBuiltinPrompts; }

int RunSequential(v1::Router::Stub& stub, const BenchArgs& a, BenchReport* rep) {
  const auto& prompts = rep->prompts;
  const auto& variants = rep->variants;
  for (int w = 0; w < a.warmup; ++w) {
    for (const auto& v : variants) {
      RequestResult r;
      if (absl::Status s = RunRequest(stub, a, prompts[0], v, &r); !s.ok()) {
        return FailRun(rep, "warmup: " + std::string(s.message()));
      }
    }
  }
  std::string err;
  const bool progress = Progress();
  const size_t total = static_cast<size_t>(a.repeat) * prompts.size() * variants.size();
  auto& results = rep->sequential;
  for (int rep_i = 0; rep_i < a.repeat; ++rep_i) {
    for (size_t p = 0; p < prompts.size(); ++p) {
      for (size_t vi = 0; vi < variants.size(); ++vi) {
        RequestResult r;
        r.variant = vi;
        r.prompt = p;
        r.repeat = rep_i;
        std::optional<std::map<std::string, double>> before;
        if (rep->stats) before = PipelineCounters(stub, &err);
        if (absl::Status s = RunRequest(stub, a, prompts[p], variants[vi], &r); !s.ok()) {
          return FailRun(rep, "prompt " + std::to_string(p + 1) + ": " + std::string(s.message()));
        }
        if (before) {
          if (auto after = PipelineCounters(stub, &err))
            r.stats_delta = CounterDelta(*before, *after);
        }
        results.push_back(std::move(r));
        if (!progress) continue;
        std::fprintf(stderr, "\r[%zu/%zu] %-26s prompt %zu: %llu tokens in %.2f s", results.size(),
                     total, variants[vi].label.c_str(), p + 1,
                     static_cast<unsigned long long>(results.back().completion_tokens),
                     results.back().wall_s);
        std::fflush(stderr);
      }
    }
  }
  if (progress) std::fprintf(stderr, "\n");

  std::vector<const RequestResult*> all;
  for (const auto& r : results) all.push_back(&r);
  if (rep->greedy) rep->identical = CheckIdentical(all, variants);
  for (size_t vi = 0; vi < variants.size(); ++vi) {
    std::vector<const RequestResult*> rs;
    for (const auto* r : all) {
      if (r->variant == vi) rs.push_back(r);
    }
    Row row = Summarize(rs);
    row.label = variants[vi].label;
    row.variant = vi;
    row.wall_s = row.busy_s;
    if (row.wall_s > 0) row.tok_s = static_cast<double>(row.tokens) / row.wall_s;
    rep->rows.push_back(std::move(row));
  }
  SetSpeedups(variants, &rep->rows);
  return 0;
}

int RunConcurrent(v1::Router::Stub& stub, const BenchArgs& a, BenchReport* rep) {
  const bool progress = Progress();
  for (int n : a.concurrency) {
    for (size_t vi = 0; vi < rep->variants.size(); ++vi) {
      const Variant& v = rep->variants[vi];
      if (absl::Status s = WarmLevel(stub, a, rep->prompts, v, n); !s.ok()) {
        return FailRun(rep, "warmup at N=" + std::to_string(n) + ": " + std::string(s.message()));
      }
      if (progress) std::fprintf(stderr, "\r%-26s N=%-3d running...          ", v.label.c_str(), n);
      const int requests = RequestsPerLevel(a, n, rep->prompts.size());
      rep->levels.push_back(
          RunLevel(stub, a, rep->prompts, rep->variants, vi, n, requests, rep->stats));
      rep->rows.push_back(LevelRow(rep->levels.back(), rep->variants));
      if (!progress) continue;
      const Row& row = rep->rows.back();
      std::fprintf(stderr, "\r%-26s N=%-3d %d requests, %d errors, %.2f tokens/s\n",
                   v.label.c_str(), n, row.requests, row.Errors(), row.tok_s);
    }
  }
  std::vector<const RequestResult*> all;
  for (const LevelRun& level : rep->levels) {
    for (const RequestResult& r : level.requests) all.push_back(&r);
  }
  if (rep->greedy) rep->identical = CheckIdentical(all, rep->variants);
  SetSpeedups(rep->variants, &rep->rows);
  return 0;
}

namespace {

// Under load a full admission queue is the router doing its job: counted in the table, not a
// failure of the benchmark. Any other failed request, or a row without a single success, is.
int ConcurrentExitStatus(const BenchReport& rep) {
  for (const Row& row : rep.rows) {
    if (row.requests > 0) continue;
    std::cerr << "error: " << row.label << " at N=" << row.concurrency
              << ": no request succeeded\n";
    return 1;
  }
  int other = 0;
  const absl::Status* example = nullptr;
  for (const LevelRun& level : rep.levels) {
    for (const RequestResult& r : level.requests) {
      if (r.status.ok() || absl::IsResourceExhausted(r.status)) continue;
      ++other;
      if (!example) example = &r.status;
    }
  }
  if (other == 0) return 0;
  std::cerr << "error: " << other << " request(s) failed, e.g. " << example->message() << "\n";
  return 1;
}

}  // namespace

int RunBench(const BenchArgs& a) {
  BenchReport rep;
  rep.args = &a;
  if (!a.prompts_file.empty()) {
    std::ifstream f(a.prompts_file);
    if (!f) return Fail("cannot read " + a.prompts_file);
    for (std::string line; std::getline(f, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") != std::string::npos) rep.prompts.push_back(line);
    }
    if (rep.prompts.empty()) return Fail(a.prompts_file + " has no prompts");
  } else {
    rep.prompts = kBuiltinPrompts;
  }
  rep.variants = BenchVariants(a);
  if (rep.variants.empty()) return Fail("no modes to run");

  auto stub = v1::Router::NewStub(BenchChannel(a.router));
  rep.cluster = QueryClusterInfo(*stub, a.draft);
  rep.env = CollectRunEnv();
  rep.greedy = a.temperature <= 0;
  rep.stats = a.stats;
  std::string err;
  if (rep.stats && !PipelineCounters(*stub, &err)) {
    std::cerr << "warning: Router.GetClusterStats at " << a.router << " failed (" << err
              << "); continuing without --stats\n";
    rep.stats = false;
  }

  const bool concurrent = a.Concurrent();
  if (int rc = concurrent ? RunConcurrent(*stub, a, &rep) : RunSequential(*stub, a, &rep)) {
    return rc;
  }

  const std::string text = MarkdownReport(rep);
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
  if (!a.out.empty()) {
    std::ofstream f(a.out, std::ios::binary);
    f << text;
    if (!f) return Fail("cannot write " + a.out);
  }
  if (!a.json_out.empty()) {
    std::ofstream f(a.json_out, std::ios::binary);
    f << JsonReport(rep);
    if (!f) return Fail("cannot write " + a.json_out);
  }
  if (rep.greedy && !rep.identical) {
    std::cerr << "error: greedy token ids differ between modes\n";
    return 2;
  }
  return concurrent ? ConcurrentExitStatus(rep) : 0;
}

}  // namespace pipeinfer::cli
