#include "spec/controller_common.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "plan/costs.h"
#include "sampling/speculative.h"
#include "spec/spec_budget.h"

namespace pipeinfer::spec {

absl::StatusOr<uint32_t> PositionLimit(std::span<const int32_t> prompt, const StopRules& stop) {
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (stop.max_context == 0 || prompt.size() >= stop.max_context) {
    return absl::OutOfRangeError(absl::StrCat(
        "the prompt (", prompt.size(), " tokens) does not fit max_context ", stop.max_context));
  }
  const uint64_t want = static_cast<uint64_t>(prompt.size()) + stop.max_new_tokens;
  return static_cast<uint32_t>(std::min<uint64_t>(want, stop.max_context));
}

std::vector<RunSpec> PrefillRuns(std::span<const int32_t> prompt, uint32_t max_run_tokens) {
  const uint32_t chunk = std::max<uint32_t>(max_run_tokens, 1);
  const uint32_t len = static_cast<uint32_t>(prompt.size());
  std::vector<RunSpec> runs;
  for (uint32_t off = 0; off < len; off += chunk) {
    const uint32_t n = std::min(chunk, len - off);
    RunSpec run;
    run.verified = true;
    for (uint32_t i = 0; i < n; ++i) {
      run.tokens.push_back(prompt[off + i]);
      run.positions.push_back(off + i);
    }
    if (off + n == len) run.result_rows.push_back(n - 1);
    runs.push_back(std::move(run));
  }
  return runs;
}

uint32_t PrefillRunTokens(uint32_t prompt_len, const ControllerOptions& options) {
  const uint32_t cap = std::max<uint32_t>(options.max_run_tokens, 1);
  if (!options.split_prefill || options.costs == nullptr || prompt_len <= 1) return cap;
  const SpecBudget::Snapshot fit = options.costs->snapshot();
  if (!fit.have_model || fit.b_us <= 0 || fit.verified != 0 || fit.speculative != 0) return cap;
  plan::Costs c;
  c.stages = static_cast<int>(std::max<uint32_t>(options.n_stages, 1));
  c.pass_us = std::max(0.0, fit.a_us);
  c.token_us = fit.b_us;
  const int runs = plan::BestPrefillRuns(c, prompt_len, cap);
  return std::min(cap, (prompt_len + runs - 1) / static_cast<uint32_t>(runs));
}

RunSpec NewestTokenRun(const std::vector<int32_t>& committed) {
  RunSpec run;
  run.verified = true;
  run.tokens.push_back(committed.back());
  run.positions.push_back(static_cast<uint32_t>(committed.size()) - 1);
  run.result_rows.push_back(0);
  return run;
}

std::vector<int32_t> TakeSince(const std::vector<int32_t>& committed, size_t* emitted) {
  std::vector<int32_t> out(committed.begin() + static_cast<std::ptrdiff_t>(*emitted),
                           committed.end());
  *emitted = committed.size();
  return out;
}

Finish FinishAfter(const StopRules& stop, int32_t token, size_t length, uint32_t limit) {
  const bool eos = !stop.ignore_eos &&
                   std::find(stop.eos_ids.begin(), stop.eos_ids.end(), token) != stop.eos_ids.end();
  const bool stop_id =
      std::find(stop.stop_ids.begin(), stop.stop_ids.end(), token) != stop.stop_ids.end();
  if (eos || stop_id) return Finish::kStop;
  if (length >= limit) return Finish::kLength;
  return Finish::kNone;
}

absl::StatusOr<sampling::SparseDist> RowDistribution(const TargetRow& row, bool greedy,
                                                     sampling::Sampler& sampler, uint64_t run_id) {
  sampling::SparseDist p;
  switch (row.kind) {
    case TargetRow::Kind::kArgmax:
      if (!greedy) return absl::InternalError("an ARGMAX row for a sampled request");
      if (row.argmax < 0) return absl::InternalError("an ARGMAX row without a token");
      p.ids.push_back(row.argmax);
      p.probs.push_back(1.0f);
      break;
    case TargetRow::Kind::kSparse:
      p = row.sparse;
      break;
    case TargetRow::Kind::kFull:
      p = sampler.Distribution(row.logits);
      break;
  }
  if (p.empty()) return absl::InternalError(absl::StrCat("run ", run_id, ": an empty row"));
  return p;
}

absl::StatusOr<Choice> ChooseToken(const TargetRow& row, bool greedy, sampling::Sampler& sampler,
                                   const sampling::SparseDist& children_q,
                                   std::span<const int32_t> children, uint64_t run_id) {
  absl::StatusOr<sampling::SparseDist> dist = RowDistribution(row, greedy, sampler, run_id);
  if (!dist.ok()) return dist.status();
  const sampling::SparseDist& p = *dist;
  sampling::Rng& rng = sampler.rng();
  Choice c;
  if (greedy) {
    c.token = p.ids[static_cast<size_t>(std::max_element(p.probs.begin(), p.probs.end()) -
                                        p.probs.begin())];
    for (size_t i = 0; i < children.size(); ++i) {
      if (children[i] == c.token) c.chosen = static_cast<int32_t>(i);
    }
  } else if (!children.empty()) {
    const sampling::CandidatesResult a =
        sampling::AcceptDraftCandidates(p, children_q, children, rng);
    c.token = a.token;
    c.chosen = a.accepted_index;
  } else {
    c.token = sampling::Sample(p, rng);
  }
  if (c.token < 0) return absl::InternalError(absl::StrCat("run ", run_id, ": no token sampled"));
  return c;
}

absl::StatusOr<TokenLogprob> RowLogprob(const TargetRow& row, int32_t token, uint32_t n_top) {
  if (row.kind != TargetRow::Kind::kFull) {
    return absl::InternalError("log-probabilities need FULL result rows");
  }
  const std::vector<float>& l = row.logits;
  if (token < 0 || static_cast<size_t>(token) >= l.size()) {
    return absl::InternalError(absl::StrCat("token ", token, " is outside the row"));
  }
  // NaN counts as -inf (an impossible token).
  auto at = [&](size_t i) {
    return std::isnan(l[i]) ? -std::numeric_limits<double>::infinity() : static_cast<double>(l[i]);
  };
  double m = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < l.size(); ++i) m = std::max(m, at(i));
  double z = 0.0;
  for (size_t i = 0; i < l.size(); ++i) z += std::exp(at(i) - m);
  const double log_z = m + std::log(z);
  TokenLogprob out;
  out.logprob = static_cast<float>(at(static_cast<size_t>(token)) - log_z);
  const size_t k = std::min<size_t>(n_top, l.size());
  std::vector<int32_t> idx(l.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
                    [&](int32_t a, int32_t b) {
                      const double x = at(static_cast<size_t>(a)), y = at(static_cast<size_t>(b));
                      return x > y || (x == y && a < b);
                    });
  for (size_t i = 0; i < k; ++i) {
    out.top_ids.push_back(idx[i]);
    out.top_logprobs.push_back(static_cast<float>(at(static_cast<size_t>(idx[i])) - log_z));
  }
  return out;
}

absl::Status RecordLogprob(const ControllerOptions& options, const TargetRow& row, int32_t token,
                           std::vector<TokenLogprob>* out) {
  if (options.logprobs < 0) return absl::OkStatus();
  absl::StatusOr<TokenLogprob> lp = RowLogprob(row, token, static_cast<uint32_t>(options.logprobs));
  if (!lp.ok()) return lp.status();
  out->push_back(std::move(*lp));
  return absl::OkStatus();
}

}  // namespace pipeinfer::spec
