#include "cli/bench_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace pipeinfer::cli {
namespace {

std::string Fmt(const char* fmt, double v) { return FormatCell(fmt, v); }

// "0", or the count with its codes: "3 (RESOURCE_EXHAUSTED 2, UNAVAILABLE 1)".
std::string FmtErrors(const Row& r) {
  std::string s = std::to_string(r.Errors());
  if (r.errors.empty()) return s;
  std::string codes;
  for (const auto& [code, n] : r.errors) {
    codes += (codes.empty() ? "" : ", ") + code + " " + std::to_string(n);
  }
  return s + " (" + codes + ")";
}

// The optional --stats columns, shown when some row has the counter.
struct StatColumns {
  bool skipped = false, stopped = false, bytes = false;

  explicit StatColumns(const BenchReport& rep) {
    const auto has = [&](const char* key) {
      return rep.stats && std::any_of(rep.rows.begin(), rep.rows.end(),
                                      [&](const Row& r) { return r.stats.count(key); });
    };
    skipped = has(kStatSkipped);
    stopped = has(kStatStopped);
    bytes = has(kStatStageBytes);
  }
  void Header(std::ostream& md) const {
    if (skipped) md << " stage skipped/req |";
    if (stopped) md << " stage stopped/req |";
    if (bytes) md << " stage bytes sent/token |";
  }
  void Rule(std::ostream& md) const {
    if (skipped) md << "--:|";
    if (stopped) md << "--:|";
    if (bytes) md << "--:|";
  }
  void Cells(std::ostream& md, const Row& r) const {
    const auto per = [&](const char* k, double n) {
      auto it = r.stats.find(k);
      return it == r.stats.end() || n == 0 ? NAN : it->second / n;
    };
    if (skipped) md << " " << Fmt("%.1f", per(kStatSkipped, r.requests)) << " |";
    if (stopped) md << " " << Fmt("%.1f", per(kStatStopped, r.requests)) << " |";
    if (bytes)
      md << " " << Fmt("%.0f", per(kStatStageBytes, static_cast<double>(r.tokens))) << " |";
  }
};

// The per-request columns both tables end with.
void RequestCells(std::ostream& md, const Row& r) {
  md << Fmt("%.3f", r.acceptance) << " | " << Fmt("%.1f", r.runs_plain) << " | "
     << Fmt("%.1f", r.runs_spec) << " | " << Fmt("%.1f", r.runs_cancelled) << " | "
     << Fmt("%.1f", r.runs_tombstoned) << " |";
}

void Header(std::ostream& md, const BenchReport& rep) {
  const BenchArgs& a = *rep.args;
  const ClusterInfo& info = rep.cluster;
  md << "## pipeinfer bench: "
     << (info.n_stages > 0 ? std::to_string(info.n_stages) + "-stage cluster" : "cluster") << ", "
     << rep.env.date << "\n\n";
  md << "- command: `" << rep.env.command << "`\n";
  md << "- date: " << rep.env.date << "\n";
  md << "- commit: " << rep.env.commit << "\n";
  md << "- machine: nproc " << rep.env.nproc << ", CPU " << rep.env.cpu << "\n";
  md << "- model: " << info.model;
  if (!info.draft_model.empty()) md << ", draft " << info.draft_model;
  md << "; stages: " << (info.n_stages > 0 ? std::to_string(info.n_stages) : "unknown") << "\n";
  if (!info.defaults.empty()) md << "- draft service defaults: " << info.defaults << "\n";
  md << "- " << rep.prompts.size() << " prompts" << (a.prompts_file.empty() ? " (built-in)" : "");
  if (!rep.Concurrent()) {
    md << " x " << a.repeat << " repeat(s) per row, " << a.warmup << " warmup round(s); max_tokens "
       << a.max_tokens << (a.stop_at_eos ? "" : ", ignore_eos") << ", temperature " << a.temperature
       << "; one request at a time, rows interleaved per prompt\n";
    return;
  }
  std::string levels;
  for (int n : a.concurrency) levels += (levels.empty() ? "" : ",") + std::to_string(n);
  md << "; max_tokens " << a.max_tokens << (a.stop_at_eos ? "" : ", ignore_eos") << ", temperature "
     << a.temperature << "\n";
  md << "- concurrency " << levels
     << ": per level and mode, N client threads issue requests back to back (request k: prompt k "
        "mod "
     << rep.prompts.size() << ") until "
     << (a.requests_per_level > 0
             ? std::to_string(a.requests_per_level) + " requests"
             : "max(2N, " + std::to_string(rep.prompts.size() * a.repeat) + ") requests")
     << " have finished; " << a.warmup
     << " unrecorded warmup round(s) of N requests first; levels in order, every mode per level\n";
}

void SequentialTable(std::ostream& md, const BenchReport& rep) {
  const StatColumns sc(rep);
  md << "| mode | requests | completion tokens | tokens/s | speedup vs plain | TTFT p50 ms "
        "| ITL p50 ms | ITL p99 ms | acceptance | runs plain/req | runs spec/req "
        "| cancelled/req | tombstoned/req |";
  sc.Header(md);
  md << "\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|";
  sc.Rule(md);
  md << "\n";
  for (const Row& r : rep.rows) {
    md << "| " << r.label << " | " << r.requests << " | " << r.tokens << " | "
       << Fmt("%.2f", r.tok_s) << " | " << Fmt("%.2fx", r.speedup) << " | "
       << Fmt("%.1f", r.ttft_p50_ms) << " | " << Fmt("%.2f", r.itl_p50_ms) << " | "
       << Fmt("%.2f", r.itl_p99_ms) << " | ";
    RequestCells(md, r);
    sc.Cells(md, r);
    md << "\n";
  }
  md << "\n";
  md << "tokens/s = completion tokens / summed client wall time of the requests; TTFT = client "
        "time to the first delta (prefill included); ITL = gap between deltas, split evenly over "
        "the tokens of a delta; acceptance = tokens accepted / drafted; runs from the "
        "Finished.spec counters.\n\n";
}

void LoadTable(std::ostream& md, const BenchReport& rep) {
  const StatColumns sc(rep);
  md << "| mode | N | requests | errors | completion tokens | wall s | in flight | tokens/s "
        "| requests/s | vs plain | vs N=1 | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
        "| acceptance | runs plain/req | runs spec/req | cancelled/req | tombstoned/req |";
  sc.Header(md);
  md << "\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|";
  sc.Rule(md);
  md << "\n";
  for (const Row& r : rep.rows) {
    md << "| " << r.label << " | " << r.concurrency << " | " << r.requests << " | " << FmtErrors(r)
       << " | " << r.tokens << " | " << Fmt("%.2f", r.wall_s) << " | " << Fmt("%.2f", r.in_flight)
       << " | " << Fmt("%.2f", r.tok_s) << " | " << Fmt("%.2f", r.req_s) << " | "
       << Fmt("%.2fx", r.speedup) << " | " << Fmt("%.2fx", r.vs_n1) << " | "
       << Fmt("%.1f", r.ttft_p50_ms) << " | " << Fmt("%.1f", r.ttft_p99_ms) << " | "
       << Fmt("%.2f", r.itl_p50_ms) << " | " << Fmt("%.2f", r.itl_p99_ms) << " | ";
    RequestCells(md, r);
    sc.Cells(md, r);
    md << "\n";
  }
  md << "\n";
  md << "N = client threads; requests = successful ones; errors = failed requests by gRPC code "
        "(RESOURCE_EXHAUSTED: the router's admission queue was full), not retried; wall s = the "
        "level's first request start to its last end; tokens/s and requests/s = completion tokens "
        "and successful requests / wall s; in flight = summed request time / wall s (mean requests "
        "in flight); vs plain = tokens/s / plain's at the same N; vs N=1 = tokens/s / the same "
        "mode's at N=1; TTFT = client time to the first delta (prefill and router queueing "
        "included); ITL = gap between deltas, split evenly over the tokens of a delta; acceptance "
        "= tokens accepted / drafted; runs from the Finished.spec counters; stage columns from "
        "counter deltas over the level.\n\n";
}

}  // namespace

std::string FormatCell(const char* fmt, double v) {
  if (!std::isfinite(v)) return "—";
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

std::string MarkdownReport(const BenchReport& rep) {
  std::ostringstream md;
  Header(md, rep);
  md << "\n";
  if (rep.Concurrent()) {
    LoadTable(md, rep);
  } else {
    SequentialTable(md, rep);
  }
  if (rep.greedy) {
    md << "identical tokens across modes: " << (rep.identical ? "yes" : "no") << "\n";
  } else {
    md << "identical tokens across modes: not checked (temperature > 0)\n";
  }
  return md.str();
}

}  // namespace pipeinfer::cli
