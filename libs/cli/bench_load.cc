#include "cli/bench_load.h"

#include <algorithm>
#include <atomic>
#include <latch>
#include <optional>
#include <thread>

#include "cli/bench_cluster.h"

namespace pipeinfer::cli {

int RequestsPerLevel(const BenchArgs& a, int concurrency, size_t n_prompts) {
  if (a.requests_per_level > 0) return a.requests_per_level;
  return std::max(2 * concurrency, static_cast<int>(n_prompts) * a.repeat);
}

absl::Status WarmLevel(v1::Router::Stub& stub, const BenchArgs& a,
                       const std::vector<std::string>& prompts, const Variant& v, int concurrency) {
  for (int w = 0; w < a.warmup; ++w) {
    std::vector<RequestResult> rs(concurrency);
    std::vector<std::thread> clients;
    for (int i = 0; i < concurrency; ++i) {
      clients.emplace_back(
          [&, i] { RunRequest(stub, a, prompts[i % prompts.size()], v, &rs[i]).IgnoreError(); });
    }
    for (auto& t : clients) t.join();
    for (const RequestResult& r : rs) {
      if (!r.status.ok() && !absl::IsResourceExhausted(r.status)) return r.status;
    }
  }
  return absl::OkStatus();
}

LevelRun RunLevel(v1::Router::Stub& stub, const BenchArgs& a,
                  const std::vector<std::string>& prompts, const std::vector<Variant>& variants,
                  size_t variant, int concurrency, int n_requests, bool stats) {
  LevelRun level;
  level.variant = variant;
  level.concurrency = concurrency;
  level.requests.resize(n_requests);
  std::string err;
  std::optional<std::map<std::string, double>> before;
  if (stats) before = PipelineCounters(stub, &err);

  std::atomic<int> next{0};
  // All clients start together, so the level begins at full concurrency rather than ramping up
  // while threads are still being created.
  std::latch go(concurrency + 1);
  std::vector<std::thread> clients;
  for (int c = 0; c < concurrency; ++c) {
    clients.emplace_back([&] {
      go.arrive_and_wait();
      for (int k = next++; k < n_requests; k = next++) {
        // Each slot is written by the one thread that claimed it: no lock needed.
        RequestResult& r = level.requests[k];
        r.variant = variant;
        r.prompt = static_cast<size_t>(k) % prompts.size();
        r.repeat = k / static_cast<int>(prompts.size());
        r.concurrency = concurrency;
        RunRequest(stub, a, prompts[r.prompt], variants[variant], &r).IgnoreError();
      }
    });
  }
  go.arrive_and_wait();
  for (auto& t : clients) t.join();

  if (before) {
    if (auto after = PipelineCounters(stub, &err)) level.stats = CounterDelta(*before, *after);
  }
  if (!level.requests.empty()) {
    level.start = level.requests.front().start;
    level.end = level.requests.front().end;
    for (const RequestResult& r : level.requests) {
      level.start = std::min(level.start, r.start);
      level.end = std::max(level.end, r.end);
    }
  }
  return level;
}

Row LevelRow(const LevelRun& level, const std::vector<Variant>& variants) {
  std::vector<const RequestResult*> rs;
  double busy_all = 0;  // failed requests included: they held a client too
  for (const RequestResult& r : level.requests) {
    rs.push_back(&r);
    busy_all += r.wall_s;
  }
  Row row = Summarize(rs);
  row.label = variants[level.variant].label;
  row.variant = level.variant;
  row.concurrency = level.concurrency;
  row.stats = level.stats;
  row.wall_s = level.WallSeconds();
  if (row.wall_s > 0) {
    row.tok_s = static_cast<double>(row.tokens) / row.wall_s;
    row.req_s = row.requests / row.wall_s;
    row.in_flight = busy_all / row.wall_s;
  }
  return row;
}

}  // namespace pipeinfer::cli
