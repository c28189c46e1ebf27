// JsonReport (bench_report.h): the --json file, the rows of the table and every measured request.
#include <cmath>
#include <nlohmann/json.hpp>

#include "cli/bench_report.h"

namespace pipeinfer::cli {
namespace {

using nlohmann::json;

json Num(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

json RowJson(const Row& r, bool concurrent) {
  json row = {{"mode", r.label},
              {"requests", r.requests},
              {"completion_tokens", r.tokens},
              {"wall_s", r.wall_s},
              {"tokens_per_s", Num(r.tok_s)},
              {"speedup_vs_plain", Num(r.speedup)},
              {"ttft_p50_ms", Num(r.ttft_p50_ms)},
              {"itl_p50_ms", Num(r.itl_p50_ms)},
              {"itl_p99_ms", Num(r.itl_p99_ms)},
              {"acceptance", Num(r.acceptance)},
              {"tokens_drafted", r.drafted},
              {"tokens_accepted", r.accepted},
              {"runs_plain_per_request", r.runs_plain},
              {"runs_speculative_per_request", r.runs_spec},
              {"runs_cancelled_per_request", r.runs_cancelled},
              {"runs_tombstoned_per_request", r.runs_tombstoned}};
  if (concurrent) {
    row["concurrency"] = r.concurrency;
    row["errors"] = r.Errors();
    row["errors_by_code"] = r.errors;
    row["busy_s"] = r.busy_s;
    row["in_flight"] = Num(r.in_flight);
    row["requests_per_s"] = Num(r.req_s);
    row["speedup_vs_n1"] = Num(r.vs_n1);
    row["ttft_p99_ms"] = Num(r.ttft_p99_ms);
  }
  if (!r.stats.empty()) row["pipeline_counter_deltas"] = r.stats;
  return row;
}

// `origin`: the start of the request's level, for start_s/end_s under concurrency.
json RequestJson(const RequestResult& r, const BenchReport& rep,
                 const BenchClock::time_point* origin) {
  json j = {{"mode", rep.variants[r.variant].label},
            {"prompt", r.prompt},
            {"repeat", r.repeat},
            {"wall_s", r.wall_s},
            {"ttft_s", Num(r.ttft_s)},
            {"completion_tokens", r.completion_tokens},
            {"router_ttft_us", r.timings.ttft_us()},
            {"router_total_us", r.timings.total_us()},
            {"runs_plain", r.spec.runs_plain()},
            {"runs_speculative", r.spec.runs_speculative()},
            {"runs_cancelled", r.spec.runs_cancelled()},
            {"runs_tombstoned", r.spec.runs_tombstoned()},
            {"tokens_drafted", r.spec.tokens_drafted()},
            {"tokens_accepted", r.spec.tokens_accepted()},
            {"verifications", r.spec.verifications()},
            {"token_ids", r.ids}};
  if (origin) {
    j["concurrency"] = r.concurrency;
    j["start_s"] = std::chrono::duration<double>(r.start - *origin).count();
    j["end_s"] = std::chrono::duration<double>(r.end - *origin).count();
    j["status"] = CodeName(r.status);
    if (!r.status.ok()) j["error"] = std::string(r.status.message());
  }
  return j;
}

}  // namespace

std::string JsonReport(const BenchReport& rep) {
  const BenchArgs& a = *rep.args;
  json j;
  j["command"] = rep.env.command;
  j["date"] = rep.env.date;
  j["commit"] = rep.env.commit;
  j["machine"] = {{"nproc", rep.env.nproc}, {"cpu", rep.env.cpu}};
  j["cluster"] = {{"model", rep.cluster.model},
                  {"draft_model", rep.cluster.draft_model},
                  {"stages", rep.cluster.n_stages},
                  {"draft_defaults", rep.cluster.defaults}};
  j["config"] = {{"prompts", rep.prompts},       {"max_tokens", a.max_tokens},
                 {"repeat", a.repeat},           {"warmup", a.warmup},
                 {"temperature", a.temperature}, {"ignore_eos", !a.stop_at_eos}};
  if (a.seed) j["config"]["seed"] = *a.seed;
  if (rep.Concurrent()) {
    j["config"]["concurrency"] = a.concurrency;
    j["config"]["requests_per_level"] =
        a.requests_per_level > 0 ? json(a.requests_per_level) : json("max(2N, prompts x repeat)");
  }
  j["identical_tokens"] = rep.greedy ? json(rep.identical) : json(nullptr);
  j["rows"] = json::array();
  for (const Row& r : rep.rows) j["rows"].push_back(RowJson(r, rep.Concurrent()));
  j["requests"] = json::array();
  for (const RequestResult& r : rep.sequential) {
    j["requests"].push_back(RequestJson(r, rep, nullptr));
  }
  // Under concurrency every request also carries its level and its start and end within the
  // level, so that the overlap of requests can be seen (and checked).
  for (const LevelRun& level : rep.levels) {
    for (const RequestResult& r : level.requests) {
      j["requests"].push_back(RequestJson(r, rep, &level.start));
    }
  }
  return j.dump(2) + "\n";
}

}  // namespace pipeinfer::cli
