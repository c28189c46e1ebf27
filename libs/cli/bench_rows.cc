#include "cli/bench_rows.h"

#include <algorithm>
#include <cstdio>

namespace pipeinfer::cli {

int Row::Errors() const {
  int n = 0;
  for (const auto& [code, count] : errors) n += count;
  return n;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const double pos = p * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

Row Summarize(const std::vector<const RequestResult*>& rs) {
  Row row;
  std::vector<double> ttft, itl;
  for (const RequestResult* r : rs) {
    if (!r->status.ok()) {
      ++row.errors[CodeName(r->status)];
      continue;
    }
    ++row.requests;
    row.tokens += r->completion_tokens;
    row.busy_s += r->wall_s;
    if (std::isfinite(r->ttft_s)) ttft.push_back(r->ttft_s);
    itl.insert(itl.end(), r->itl_s.begin(), r->itl_s.end());
    row.runs_plain += r->spec.runs_plain();
    row.runs_spec += r->spec.runs_speculative();
    row.runs_cancelled += r->spec.runs_cancelled();
    row.runs_tombstoned += r->spec.runs_tombstoned();
    row.drafted += r->spec.tokens_drafted();
    row.accepted += r->spec.tokens_accepted();
    for (const auto& [k, val] : r->stats_delta) row.stats[k] += val;
  }
  row.ttft_p50_ms = Percentile(ttft, 0.5) * 1e3;
  row.ttft_p99_ms = Percentile(ttft, 0.99) * 1e3;
  row.itl_p50_ms = Percentile(itl, 0.5) * 1e3;
  row.itl_p99_ms = Percentile(itl, 0.99) * 1e3;
  if (row.drafted > 0) row.acceptance = static_cast<double>(row.accepted) / row.drafted;
  if (row.requests > 0) {
    row.runs_plain /= row.requests;
    row.runs_spec /= row.requests;
    row.runs_cancelled /= row.requests;
    row.runs_tombstoned /= row.requests;
  }
  return row;
}

void SetSpeedups(const std::vector<Variant>& variants, std::vector<Row>* rows) {
  const auto find = [&](int concurrency, auto pred) -> const Row* {
    for (const Row& r : *rows) {
      if (r.concurrency == concurrency && pred(r)) return &r;
    }
    return nullptr;
  };
  for (Row& row : *rows) {
    const Row* plain =
        find(row.concurrency, [&](const Row& r) { return variants[r.variant].IsPlain(); });
    row.speedup = plain ? row.tok_s / plain->tok_s : NAN;
    if (row.concurrency == 0) continue;  // the one-at-a-time run has no levels
    const Row* one = find(1, [&](const Row& r) { return r.variant == row.variant; });
    row.vs_n1 = one ? row.tok_s / one->tok_s : NAN;
  }
}

bool CheckIdentical(const std::vector<const RequestResult*>& rs,
                    const std::vector<Variant>& variants) {
  bool identical = true;
  std::map<size_t, const RequestResult*> ref;
  for (const RequestResult* r : rs) {
    if (!r->status.ok()) continue;
    auto [it, fresh] = ref.emplace(r->prompt, r);
    if (fresh || it->second->ids == r->ids) continue;
    identical = false;
    const RequestResult& want = *it->second;
    size_t i = 0;
    while (i < want.ids.size() && i < r->ids.size() && want.ids[i] == r->ids[i]) ++i;
    const auto where = [&](const RequestResult& x) {
      std::string s = variants[x.variant].label;
      if (x.concurrency > 0) s += " at N=" + std::to_string(x.concurrency);
      return s + " (repeat " + std::to_string(x.repeat + 1) + ")";
    };
    std::fprintf(
        stderr, "mismatch: prompt %zu, %s differs from %s at token %zu (%zu vs %zu tokens)\n",
        r->prompt + 1, where(*r).c_str(), where(want).c_str(), i, r->ids.size(), want.ids.size());
  }
  return identical;
}

}  // namespace pipeinfer::cli
