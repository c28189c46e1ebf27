// results.csv and itl.csv of the scenario runner: one line per row x mode x repeat (the row fixes
// the concurrency), and one line per inter-token latency sample.
#include <cmath>
#include <cstdio>
#include <sstream>

#include "cli/bench_scenario_run.h"

namespace pipeinfer::cli {
namespace {

std::string Num(double v, const char* fmt = "%.6g") {
  if (!std::isfinite(v)) return "";
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

// RFC 4180: quoted when it holds a comma, a quote or a line break.
std::string Field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string Errors(const Row& r) {
  std::string s;
  for (const auto& [code, n] : r.errors)
    s += (s.empty() ? "" : " ") + code + ":" + std::to_string(n);
  return s;
}

}  // namespace

std::string ResultsCsv(const ScenarioResults& res) {
  std::ostringstream csv;
  csv << "scenario,group,row,label,stages,stage_us,token_us,draft_us,agreement,link_mbps,link_us,"
         "concurrency,mode,repeat,knobs,max_tokens,requests,errors,error_codes,tokens,seconds,"
         "tokens_per_s,ttft_p50_ms,ttft_p99_ms,itl_p50_ms,itl_p99_ms,acceptance,identical,status,"
         "predicted_tokens_per_s\n";
  for (const ScenarioRowResult& rr : res.rows) {
    const ScenarioRow& r = rr.row;
    const std::string status = rr.error.empty() ? "ok" : rr.error;
    for (const ScenarioLine& l : rr.lines) {
      auto pred = rr.predicted.find(l.mode);
      csv << Field(res.scenario.name) << "," << Field(r.group) << "," << r.id << ","
          << Field(r.label) << "," << r.stages << "," << r.run_us << "," << r.token_us << ","
          << r.draft_us << "," << Num(r.agreement) << "," << Num(r.link_mbps) << "," << r.link_us
          << "," << r.concurrency << "," << Field(l.mode) << "," << l.repeat + 1 << ","
          << Field(res.knobs) << "," << res.scenario.bench.max_tokens << "," << l.m.requests << ","
          << l.m.Errors() << "," << Field(Errors(l.m)) << "," << l.m.tokens << ","
          << Num(l.m.wall_s) << "," << Num(l.m.tok_s) << "," << Num(l.m.ttft_p50_ms) << ","
          << Num(l.m.ttft_p99_ms) << "," << Num(l.m.itl_p50_ms) << "," << Num(l.m.itl_p99_ms) << ","
          << Num(l.m.acceptance) << "," << (rr.identical ? "yes" : "no") << "," << Field(status)
          << "," << (pred == rr.predicted.end() ? "" : Num(pred->second)) << "\n";
    }
  }
  return csv.str();
}

std::string ItlCsv(const ScenarioResults& res) {
  std::ostringstream csv;
  csv << "row,mode,concurrency,itl_ms\n";
  for (const ScenarioRowResult& rr : res.rows) {
    for (const auto& [mode, samples] : rr.itl_ms) {
      for (double v : samples) {
        csv << rr.row.id << "," << Field(mode) << "," << rr.row.concurrency << "," << Num(v, "%.4f")
            << "\n";
      }
    }
  }
  return csv.str();
}

}  // namespace pipeinfer::cli
