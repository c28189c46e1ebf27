#include "spec/spec_budget.h"

#include <algorithm>
#include <cmath>

namespace pipeinfer::spec {
namespace {

// Passes needed before the fit is trusted.
constexpr size_t kMinPasses = 16;
// Below this variance of the pass sizes (in tokens^2) the window cannot separate a from b.
constexpr double kMinVariance = 0.25;

}  // namespace

SpecBudget::SpecBudget(SpecBudgetOptions options) : options_(options) {}

void SpecBudget::ObservePass(uint32_t tokens, uint64_t micros) {
  if (tokens == 0) return;
  std::lock_guard<std::mutex> l(mu_);
  const double t = tokens, y = static_cast<double>(micros);
  passes_.emplace_back(t, y);
  sum_t_ += t;
  sum_y_ += y;
  sum_tt_ += t * t;
  sum_ty_ += t * y;
  while (passes_.size() > std::max<uint32_t>(options_.window, kMinPasses)) {
    const auto [ot, oy] = passes_.front();
    passes_.pop_front();
    sum_t_ -= ot;
    sum_y_ -= oy;
    sum_tt_ -= ot * ot;
    sum_ty_ -= ot * oy;
  }
  // The slope is remembered while the window can tell it apart from the intercept.
  const double n = static_cast<double>(passes_.size());
  const double mean_t = sum_t_ / n, var_t = sum_tt_ / n - mean_t * mean_t;
  if (passes_.size() >= kMinPasses && var_t >= kMinVariance) {
    last_b_us_ = (sum_ty_ / n - mean_t * sum_y_ / n) / var_t;
  }
}

void SpecBudget::ObserveAcceptance(uint64_t drafted, uint64_t accepted) {
  if (drafted == 0 && accepted == 0) return;
  std::lock_guard<std::mutex> l(mu_);
  // Exponentially decayed sums of both streams (drafting and verification happen at different
  // times); their ratio is the recent acceptance. Sums, not averages, so that no single early
  // sample dominates.
  const double keep = 1 - options_.alpha_weight;
  drafted_sum_ = keep * drafted_sum_ + static_cast<double>(drafted);
  accepted_sum_ = keep * accepted_sum_ + static_cast<double>(accepted);
  if (drafted_sum_ > 0) alpha_ = std::min(1.0, accepted_sum_ / drafted_sum_);
}

void SpecBudget::AddVerified(int64_t tokens) {
  std::lock_guard<std::mutex> l(mu_);
  verified_ = std::max<int64_t>(0, verified_ + tokens);
}

void SpecBudget::AddSpeculative(int64_t tokens) {
  std::lock_guard<std::mutex> l(mu_);
  speculative_ = std::max<int64_t>(0, speculative_ + tokens);
}

SpecBudget::Snapshot SpecBudget::Compute() const {
  Snapshot s;
  s.verified = verified_;
  s.speculative = speculative_;
  s.alpha = alpha_ < 0 ? 0 : alpha_;
  const double n = static_cast<double>(passes_.size());
  if (options_.scale <= 0 || n < kMinPasses || !last_b_us_) return s;
  // The slope of this window, or, when every recent pass had about the same size (a fixed
  // micro-batch, say), the last one measured (ObservePass); the intercept follows the window.
  s.b_us = *last_b_us_;
  const double mean_t = sum_t_ / n, mean_y = sum_y_ / n;
  s.a_us = mean_y - s.b_us * mean_t;
  s.have_model = true;
  const double per_pass = std::max<double>(options_.min_tokens_per_pass,
                                           s.b_us > 0 ? std::max(0.0, s.a_us) / s.b_us : 1e9);
  const uint32_t stages = std::max<uint32_t>(options_.n_stages, 1);
  s.cap = std::min(1e9, per_pass * stages * options_.scale);
  if (alpha_ >= 0 && alpha_ < 1 && s.b_us > 0) {
    const double verified_per_pass = static_cast<double>(verified_) / stages;
    const double pays = options_.margin * alpha_ / (1 - alpha_) * std::max(0.0, s.a_us) / s.b_us;
    s.speculating = verified_per_pass < pays;
  }
  if (!s.speculating) s.cap = 0;
  return s;
}

bool SpecBudget::Allows(uint32_t tokens, int64_t own_verified, int64_t own_speculative) const {
  std::lock_guard<std::mutex> l(mu_);
  if (verified_ <= own_verified && speculative_ <= own_speculative) return true;  // alone
  const Snapshot s = Compute();
  if (!s.have_model) return true;  // nothing measured yet: the pipeline is (nearly) idle
  if (!s.speculating) return false;
  // While speculation pays, every request may have one micro-batch in flight; beyond that it gets
  // its share of the cap. The share also bounds how far ahead of its verified tokens a request
  // guesses under load, where deep guesses are mostly thrown away.
  if (own_speculative == 0) return true;
  const double share = s.cap / static_cast<double>(std::max<int64_t>(1, sessions_));
  return static_cast<double>(own_speculative + tokens) <= share &&
         static_cast<double>(speculative_ + tokens) <= s.cap;
}

void SpecBudget::AddSession(int delta) {
  std::lock_guard<std::mutex> l(mu_);
  sessions_ = std::max<int64_t>(0, sessions_ + delta);
}

uint32_t SpecBudget::InflightShare(uint32_t limit) const {
  int64_t requests;
  {
    std::lock_guard<std::mutex> l(mu_);
    requests = sessions_;
  }
  if (requests <= 1) return limit;
  // On 8 emulated stages with forced 4-node runs, medians of 3 alternating rounds: 62.8 -> 70.7
  // tokens/s at 4 clients, 98.4 -> 107.1 at 8 (docs/speculation.md, "Sharing the pipeline"); a
  // minimum share of 1 was slower than not sharing (57 and 86 in one round).
  const int64_t share = (static_cast<int64_t>(limit) + requests - 1) / requests;
  return static_cast<uint32_t>(
      std::clamp<int64_t>(share, std::min(kMinInflightShare, limit), limit));
}

SpecBudget::Snapshot SpecBudget::snapshot() const {
  std::lock_guard<std::mutex> l(mu_);
  return Compute();
}

}  // namespace pipeinfer::spec
