#include "plan/recommend.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pipeinfer::plan {
namespace {

// A setting within this fraction of the best is as good: the smallest such setting wins (fewer
// drafted tokens, fewer runs, fewer machines).
constexpr double kTolerance = 0.01;

absl::StatusOr<double> PipeInferRate(const PlanInput& in) {
  absl::StatusOr<std::vector<ModePrediction>> modes = PredictModes(in);
  if (!modes.ok()) return modes.status();
  return modes->back().tokens_per_s;
}

struct Best {
  int value = 0;
  double rate = 0;
};

// Scans `field` over [lo, hi] and keeps the smallest value within kTolerance of the best rate.
absl::StatusOr<Best> Scan(PlanInput in, int PlanInput::*field, int lo, int hi) {
  std::vector<std::pair<int, double>> rates;
  double top = 0;
  for (int v = lo; v <= hi; ++v) {
    in.*field = v;
    absl::StatusOr<double> r = PipeInferRate(in);
    if (!r.ok()) return r.status();
    rates.emplace_back(v, *r);
    top = std::max(top, *r);
  }
  for (const auto& [v, r] : rates) {
    if (r >= top * (1 - kTolerance)) return Best{v, r};
  }
  return Best{lo, rates.front().second};
}

}  // namespace

absl::StatusOr<Recommendation> Recommend(const PlanInput& in) {
  Recommendation rec;
  // draft_max: the micro-batch length with the best predicted pipeinfer rate.
  absl::StatusOr<Best> k = Scan(in, &PlanInput::draft_max, 1, 16);
  if (!k.ok()) return k.status();
  rec.draft_max = k->value;
  absl::StatusOr<double> given = PipeInferRate(in);
  if (!given.ok()) return given.status();
  rec.why_draft_max = absl::StrFormat(
      "draft_max %d: the best predicted pipeinfer rate (%.1f tokens/s; %.1f at %d) of 1..16 within "
      "1 %%; a micro-batch costs k x %.0f us of drafting and the first rejection in it cancels "
      "the rest",
      rec.draft_max, k->rate, *given, in.draft_max, std::max(in.draft_us, in.draft_floor_us));

  // max_inflight, with that draft_max: beyond the pipeline's depth in runs, more only queue.
  PlanInput with_k = in;
  with_k.draft_max = rec.draft_max;
  absl::StatusOr<Best> f = Scan(with_k, &PlanInput::max_inflight, 2, 2 * in.stages + 2);
  if (!f.ok()) return f.status();
  rec.max_inflight = f->value;
  rec.why_max_inflight = absl::StrFormat(
      "max_inflight %d: the fewest runs in flight per request that reach the best predicted rate "
      "(%.1f tokens/s) within 1 %%; more only wait at stage 0 (default: stages + 1 = %d)",
      rec.max_inflight, f->rate, in.stages + 1);

  // p_accept: a drafted token rides in passes that also carry V verified tokens; it adds committed
  // tokens per unit of stage time only when its chance of acceptance is above b V / (a + b V)
  // (the rule of libs/spec/spec_budget.h). V: about one verified run per pass alone, N / S loaded.
  const double verified = std::max(1.0, static_cast<double>(in.concurrency) / in.stages);
  const double cost = in.token_us * verified;
  const double breakeven = cost / (in.stage_us + cost);
  rec.p_accept = std::clamp(std::round(breakeven * 100) / 100, 0.01, 0.95);
  rec.why_p_accept = absl::StrFormat(
      "p_accept %.2f: a guess pays for its stage time when its chance exceeds b*V/(a + b*V) = "
      "%.3f (a = %.0f us, b = %.0f us, V = %.1f verified tokens per pass)",
      rec.p_accept, breakeven, in.stage_us, in.token_us, verified);

  // stages: the same total cost split over other stage counts (each stage a 1/S share of the
  // weights), no fewer than the weights need.
  const double total_pass = in.stage_us * in.stages, total_token = in.token_us * in.stages;
  const int lo = std::max(1, in.min_stages), hi = std::max(lo, std::max(16, 2 * in.stages));
  std::vector<std::pair<int, double>> rates;
  double top = 0;
  for (int s = lo; s <= hi; ++s) {
    PlanInput split = with_k;
    split.stages = s;
    split.stage_us = total_pass / s;
    split.token_us = total_token / s;
    split.max_inflight = 0;
    absl::StatusOr<double> r = PipeInferRate(split);
    if (!r.ok()) return r.status();
    rates.emplace_back(s, *r);
    top = std::max(top, *r);
  }
  PlanInput given_split = with_k;
  given_split.max_inflight = 0;
  absl::StatusOr<double> at_given = PipeInferRate(given_split);
  if (!at_given.ok()) return at_given.status();
  Best st{lo, rates.front().second};
  for (const auto& [s, r] : rates) {
    if (r >= top * (1 - kTolerance)) {
      st = Best{s, r};
      break;
    }
  }
  rec.stages = st.value;
  rec.why_stages = absl::StrFormat(
      "stages %d: the best predicted pipeinfer rate (%.1f tokens/s; %.1f at %d) when the same "
      "model is split over %d..%d stages; each stage adds a hop to every run, more stages "
      "overlap more runs%s",
      rec.stages, st.rate, *at_given, in.stages, lo, hi,
      in.min_stages > 1 ? absl::StrCat(" (the weights need at least ", in.min_stages, ")") : "");
  rec.why = absl::StrCat(rec.why_draft_max, "\n", rec.why_p_accept, "\n", rec.why_max_inflight,
                         "\n", rec.why_stages);
  return rec;
}

}  // namespace pipeinfer::plan
