#include "plan/planner.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "plan/costs.h"
#include "plan/load.h"
#include "plan/recommend.h"
#include "plan/rounds.h"

namespace pipeinfer::plan {
namespace {

constexpr uint32_t kMaxRunTokens = 512;  // a stage's default --max-run-tokens

absl::Status OutOfRange(absl::string_view field, absl::string_view range, double got) {
  return absl::InvalidArgumentError(absl::StrCat(field, " must be ", range, ", got ", got));
}

absl::Status CheckReal(absl::string_view field, double v, double lo, double hi,
                       absl::string_view range) {
  if (!std::isfinite(v) || v < lo || v > hi) return OutOfRange(field, range, v);
  return absl::OkStatus();
}

absl::Status CheckInt(absl::string_view field, int v, int lo, int hi) {
  if (v < lo || v > hi) return OutOfRange(field, absl::StrCat("in [", lo, ", ", hi, "]"), v);
  return absl::OkStatus();
}

Costs CostsOf(const PlanInput& in) {
  Costs c;
  c.stages = in.stages;
  c.pass_us = in.stage_us;
  c.token_us = in.token_us;
  c.hop_us = in.hop_us + in.link_us;
  // Mbit/s = bits per microsecond.
  c.wire_us_per_token = in.link_mbps > 0 ? in.hidden_bytes * 8.0 / in.link_mbps : 0.0;
  return c;
}

// The pipeinfer runs in flight of one request. Alone: max_inflight (default stages + 1). With
// others, the draft service's speculation budget (libs/spec/spec_budget.h) caps speculative tokens
// in flight at stages * a / b, shared among the requests beyond one micro-batch each.
int InflightCap(const PlanInput& in) {
  int cap = in.max_inflight > 0 ? in.max_inflight : in.stages + 1;
  if (in.concurrency > 1 && in.token_us > 0) {
    const double share = in.stages * in.stage_us / in.token_us / in.concurrency;
    const int micro_batches = std::max(1, static_cast<int>(share / in.draft_max));
    cap = std::min(cap, 1 + micro_batches);
  }
  return std::max(2, cap);
}

ModePrediction Finish(std::string mode, const PlanInput& in, const Costs& c, const Loaded& l) {
  ModePrediction p;
  p.mode = std::move(mode);
  // Every request: the prefill (its result is the first token), then max_tokens - 1 decoded
  // tokens at the round's rate. A request alone splits its prefill as the draft service does
  // (PrefillRunTokens): into the runs that bring the first token soonest by the stage passes'
  // cost fit, which knows nothing of hops and links. Under load it sends one run.
  Costs passes_only;
  passes_only.stages = c.stages;
  passes_only.pass_us = c.pass_us;
  passes_only.token_us = c.token_us;
  const int prefill_runs =
      in.concurrency == 1 && c.token_us > 0
          ? BestPrefillRuns(passes_only, static_cast<uint32_t>(in.prompt_tokens), kMaxRunTokens)
          : 1;
  const double ttft = c.PrefillLatency(in.prompt_tokens, prefill_runs, l.load.Visit());
  const double per_token = l.round.tokens > 0 ? l.round.time_us / l.round.tokens : 0.0;
  const double request_us = ttft + (in.max_tokens - 1) * per_token;
  p.tokens_per_s = request_us > 0 ? in.concurrency * in.max_tokens / request_us * 1e6 : 0.0;
  p.tokens_per_pass = l.round.verifications > 0 ? l.round.tokens / l.round.verifications : 1.0;
  return p;
}

}  // namespace

absl::Status Validate(const PlanInput& in) {
  constexpr double kHuge = 1e12;
  if (absl::Status s = CheckInt("stages", in.stages, 1, 1024); !s.ok()) return s;
  if (absl::Status s = CheckReal("stage_us", in.stage_us, 0, kHuge, ">= 0"); !s.ok()) return s;
  if (absl::Status s = CheckReal("token_us", in.token_us, 0, kHuge, ">= 0"); !s.ok()) return s;
  if (in.stage_us + in.token_us <= 0) {
    return absl::InvalidArgumentError("stage_us + token_us must be > 0 (a stage pass costs time)");
  }
  if (absl::Status s = CheckReal("draft_us", in.draft_us, 0, kHuge, ">= 0"); !s.ok()) return s;
  if (absl::Status s = CheckReal("agreement", in.agreement, 0, 1, "in [0, 1]"); !s.ok()) return s;
  if (absl::Status s = CheckInt("draft_max", in.draft_max, 1, 64); !s.ok()) return s;
  if (absl::Status s = CheckReal("link_mbps", in.link_mbps, 0, kHuge, ">= 0 (0 = infinite)");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckReal("link_us", in.link_us, 0, kHuge, ">= 0"); !s.ok()) return s;
  if (absl::Status s = CheckInt("hidden_bytes", in.hidden_bytes, 0, 1 << 30); !s.ok()) return s;
  if (absl::Status s = CheckInt("concurrency", in.concurrency, 1, 100000); !s.ok()) return s;
  if (absl::Status s = CheckInt("max_tokens", in.max_tokens, 1, 1000000); !s.ok()) return s;
  if (absl::Status s = CheckReal("hop_us", in.hop_us, 0, kHuge, ">= 0"); !s.ok()) return s;
  if (absl::Status s = CheckReal("draft_floor_us", in.draft_floor_us, 0, kHuge, ">= 0"); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckInt("prompt_tokens", in.prompt_tokens, 1, 1000000); !s.ok()) return s;
  if (absl::Status s = CheckInt("max_inflight", in.max_inflight, 0, 256); !s.ok()) return s;
  if (absl::Status s = CheckInt("min_stages", in.min_stages, 1, 1024); !s.ok()) return s;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ModePrediction>> PredictModes(const PlanInput& in) {
  if (absl::Status s = Validate(in); !s.ok()) return s;
  const Costs c = CostsOf(in);
  SpecShape shape;
  shape.agreement = in.agreement;
  shape.draft_max = in.draft_max;
  shape.draft_token_us = std::max(in.draft_us, in.draft_floor_us);
  shape.max_inflight = InflightCap(in);
  shape.remaining = std::max(1, in.max_tokens - 1);

  std::vector<ModePrediction> modes;
  modes.push_back(Finish("plain", in, c, SolveLoad(c, in.concurrency, [&](const Load& l) {
                           return PlainRound(c, l);
                         })));
  modes.push_back(Finish("sync", in, c, SolveLoad(c, in.concurrency, [&](const Load& l) {
                           return SyncRound(c, shape, l);
                         })));
  modes.push_back(Finish("pipeinfer", in, c, SolveLoad(c, in.concurrency, [&](const Load& l) {
                           return PipeInferRound(c, shape, l);
                         })));
  return modes;
}

absl::StatusOr<PlanOutput> Predict(const PlanInput& in) {
  absl::StatusOr<std::vector<ModePrediction>> modes = PredictModes(in);
  if (!modes.ok()) return modes.status();
  PlanOutput out;
  out.modes = std::move(*modes);
  absl::StatusOr<Recommendation> rec = Recommend(in);
  if (!rec.ok()) return rec.status();
  out.recommend = std::move(*rec);
  return out;
}

}  // namespace pipeinfer::plan
