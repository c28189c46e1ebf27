// A pipeline-wide speculation budget, shared by every request of one draft service (load-aware
// speculation, docs/architecture.md section 6). No gRPC, no engine.
//
// Cost model. Every result carries, for every stage, how long its forward pass took and how many
// tokens it computed; a stage pass costs about a + b * tokens (a: reading the weights and the
// per-pass overhead, b: the work per token). The budget fits a and b by least squares over the
// recent passes; when those all had about the same size (a fixed micro-batch), b stays the last
// slope measured and only a is refitted.
//
// When does speculation pay? Say the pipeline is busy, each pass carries V tokens of verified work
// (plain runs: each yields a committed token) and S speculative tokens, of which a fraction alpha
// is eventually committed. Tokens committed per unit of time are (V + alpha S) / (a + b (V + S)),
// which grows with S exactly when alpha a > b V (1 - alpha): speculation helps while the verified
// load per pass is below (alpha / (1 - alpha)) * (a / b) tokens, and otherwise only slows every
// pass down. So the budget allows speculation only while that holds (with a margin), and bounds
// the speculative tokens in flight to n_stages * a / b, i.e. about a/b per pass, where the token
// cost equals the fixed cost. Each request in progress gets an equal share of that cap beyond one
// micro-batch, which also keeps it from guessing far ahead under load (deep guesses are mostly
// thrown away). A loaded pipeline degrades towards plain, and never below it.
//
// The budget only arbitrates between requests: a request alone in the pipeline competes only with
// itself (its own confidence cutoff, p_accept and friends, decides how much it drafts), and
// speculation fills stages that would otherwise idle between its runs. So a request with nothing
// of anyone else in flight is always allowed: an idle pipeline keeps the single-request gains.
#pragma once

#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>

namespace pipeinfer::spec {

struct SpecBudgetOptions {
  uint32_t n_stages = 1;
  // Scales the cap on speculative tokens in flight (n_stages * a/b * scale). 0 disables the budget
  // (speculation is then limited only per request).
  double scale = 1.0;
  // Speculation is allowed while V < margin * (alpha / (1 - alpha)) * (a / b).
  double margin = 0.8;
  // Passes kept for the cost fit, and how fast old acceptance samples fade (1 - alpha_weight per
  // sample).
  uint32_t window = 512;
  double alpha_weight = 0.02;
  // The cap never drops below this many tokens per stage (a micro-batch must fit).
  uint32_t min_tokens_per_pass = 4;
};

class SpecBudget {
 public:
  explicit SpecBudget(SpecBudgetOptions options);

  // One stage pass from a result's trace: tokens computed and its duration.
  void ObservePass(uint32_t tokens, uint64_t micros);
  // Speculative tokens drafted (when launched) and accepted (when verified) since the previous
  // call of the same request; alpha is the ratio of their exponentially decayed sums.
  void ObserveAcceptance(uint64_t drafted, uint64_t accepted);
  // Runs launched (+tokens) and whose outcome arrived or that were dropped (-tokens).
  void AddVerified(int64_t tokens);
  void AddSpeculative(int64_t tokens);

  // A request started (+1) or ended (-1): the cap is shared among the requests in progress.
  void AddSession(int delta);
  // A request's share of an in-flight run limit that is meant for a pipeline to itself: the
  // stages batch every request's runs into the same passes, so the pipeline is full with about
  // `limit` runs in all. Alone: `limit`; beside others: limit / requests in progress (rounded up),
  // at least kMinInflightShare (and never above `limit`).
  uint32_t InflightShare(uint32_t limit) const;
  static constexpr uint32_t kMinInflightShare = 2;

  // May a speculative micro-batch of `tokens` tokens launch now, for a request that has `own_*`
  // tokens in flight itself (included in the totals)?
  bool Allows(uint32_t tokens, int64_t own_verified, int64_t own_speculative) const;

  struct Snapshot {
    bool have_model = false;                // enough passes to fit a and b
    double a_us = 0, b_us = 0;              // fitted cost per pass and per token
    double alpha = 0;                       // accepted / drafted (recent)
    int64_t verified = 0, speculative = 0;  // tokens in flight
    double cap = 0;           // speculative tokens allowed in flight (0 when speculation is off)
    bool speculating = true;  // whether speculation pays at the current load
  };
  Snapshot snapshot() const;

 private:
  Snapshot Compute() const;  // with mu_ held

  const SpecBudgetOptions options_;
  mutable std::mutex mu_;
  std::deque<std::pair<double, double>> passes_;  // (tokens, micros)
  double sum_t_ = 0, sum_y_ = 0, sum_tt_ = 0, sum_ty_ = 0;
  std::optional<double> last_b_us_;  // the slope of the last window that could measure it
  double alpha_ = -1;                // < 0: no sample yet
  double drafted_sum_ = 0, accepted_sum_ = 0;
  int64_t verified_ = 0, speculative_ = 0;
  int64_t sessions_ = 0;
};

}  // namespace pipeinfer::spec
