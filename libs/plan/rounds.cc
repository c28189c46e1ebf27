#include "plan/rounds.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace pipeinfer::plan {
namespace {

// Probability mass below which the rest of the geometric distribution is dropped.
constexpr double kNegligible = 1e-12;
// The most tokens one pipeinfer round is followed for (see PipeInferRound).
constexpr int kMaxRoundTokens = 2048;

// Sums of p(g) = alpha^g (1 - alpha) and of (g + 1) p(g) over g in [lo, hi].
struct Mass {
  double p = 0;
  double tokens = 0;
};
Mass GeometricBlock(double alpha, int lo, int hi) {
  Mass m;
  if (hi < lo) return m;
  const double lo_pow = std::pow(alpha, lo), hi_pow = std::pow(alpha, hi + 1);
  m.p = lo_pow - hi_pow;
  // sum (g+1)(alpha^g - alpha^(g+1)) = (lo+1) alpha^lo + sum_{lo<g<=hi} alpha^g - (hi+1)
  // alpha^(hi+1)
  const double inner = alpha >= 1.0 ? static_cast<double>(hi - lo)
                                    : (std::pow(alpha, lo + 1) - hi_pow) / (1.0 - alpha);
  m.tokens = (lo + 1) * lo_pow + inner - (hi + 1) * hi_pow;
  return m;
}

}  // namespace

double SyncTokensPerRound(double agreement, int draft_max) {
  if (agreement >= 1.0) return draft_max + 1.0;
  return (1.0 - std::pow(agreement, draft_max + 1)) / (1.0 - agreement);
}

Round PlainRound(const Costs& c, const Load& load) {
  Round r;
  r.time_us = c.Latency(1, load.Visit());
  r.tokens = 1;
  r.busy_us = c.Pass(1) + load.batched_us;
  r.runs = 1;
  r.run_tokens = 1;
  r.verifications = 1;
  return r;
}

Round SyncRound(const Costs& c, const SpecShape& s, const Load& load) {
  Round r;
  const int k = s.draft_max;
  r.time_us = k * s.draft_token_us + c.Latency(k + 1, load.Visit());
  r.tokens = SyncTokensPerRound(s.agreement, k);
  r.busy_us = c.Pass(k + 1) + load.batched_us;
  r.runs = 1;
  r.run_tokens = k + 1;
  r.verifications = 1;
  return r;
}

// A round starts when a plain run for a freshly committed token is sent (t = 0) and ends when a
// result shows a rejected guess (or the request's last token). Micro-batch j >= 1 (k draft tokens)
// is drafted right after run j - 1 is sent, once fewer than max_inflight runs are in flight; runs
// enter stage 0 one behind the other and flow down the chain. Run 0's row verifies guess 1, run j's
// rows verify guesses (j-1)k + 2 .. jk + 1, so G accepted guesses end the round with run
// ceil(G / k) (run 0 when G = 0), committing G + 1 tokens.
Round PipeInferRound(const Costs& c, const SpecShape& s, const Load& load) {
  const int k = s.draft_max;
  const double alpha = s.agreement;
  const int S = c.stages;
  const double draft = k * s.draft_token_us;
  const double visit = load.Visit();
  const double occ1 = c.Pass(1) + visit, occk = c.Pass(k) + visit;
  const double gap1 = std::max(occ1, c.Wire(1)), gapk = std::max(occk, c.Wire(k));
  const auto result_at = [&](double entry, double tokens, double occ) {
    return entry + S * occ + S * c.hop_us + (S - 1) * c.Wire(tokens);
  };
  // send[j], entry[j] (into stage 0), result[j]; extended on demand.
  std::vector<double> send{0.0}, entry{c.hop_us}, result{result_at(c.hop_us, 1, occ1)};
  const int cap = std::max(2, s.max_inflight);
  const auto extend_to = [&](size_t j) {
    while (result.size() <= j) {
      const size_t i = result.size();
      double sent = send[i - 1] + draft;
      if (i >= static_cast<size_t>(cap)) sent = std::max(sent, result[i - cap] + draft);
      const double in = std::max(sent + c.hop_us, entry[i - 1] + (i == 1 ? gap1 : gapk));
      send.push_back(sent);
      entry.push_back(in);
      result.push_back(result_at(in, k, occk));
    }
  };
  // Micro-batches sent before time t (they occupy the stages even when cancelled later).
  const auto sent_before = [&](double t) {
    while (send.back() < t) extend_to(send.size());
    const auto first_not_before = std::lower_bound(send.begin() + 1, send.end(), t);
    return static_cast<double>(first_not_before - (send.begin() + 1));
  };
  // After a rejection the next plain run reaches stage 0 before the cancel, which climbs the chain
  // from the last stage: it waits for the pass in progress there (half a pass on average), at most
  // as long as the cancel takes to arrive.
  const double restart = std::min(occk / 2, S * c.hop_us);

  // Long requests: the rate per token is that of a request of kMaxRoundTokens (the prefix's share
  // of a round is then below a percent), which bounds the work per evaluation.
  const int remaining = std::clamp(s.remaining, 1, kMaxRoundTokens);
  const int last_g = remaining - 1;  // this many accepted guesses finish the request
  Round r;
  for (int j = 0;; ++j) {
    const int lo = j == 0 ? 0 : (j - 1) * k + 1, hi = j == 0 ? 0 : j * k;
    if (lo > last_g || std::pow(alpha, lo) < kNegligible) break;
    extend_to(static_cast<size_t>(j));
    const double end_rejected = result[j] + restart;
    const Mass rejected = GeometricBlock(alpha, lo, std::min(hi, last_g - 1));
    const double mbs = sent_before(end_rejected);
    r.time_us += rejected.p * end_rejected;
    r.tokens += rejected.tokens;
    r.runs += rejected.p * (1 + mbs);
    r.run_tokens += rejected.p * (1 + mbs * k);
    r.busy_us += rejected.p * (c.Pass(1) + mbs * c.Pass(k) + (1 + mbs) * load.batched_us);
    r.verifications += rejected.p * (j + 1);
    if (last_g <= hi) {  // the request ends in this block without a rejection
      const double p = std::pow(alpha, last_g);
      const double mbs_last = sent_before(result[j]);
      r.time_us += p * result[j];
      r.tokens += p * remaining;
      r.runs += p * (1 + mbs_last);
      r.run_tokens += p * (1 + mbs_last * k);
      r.busy_us += p * (c.Pass(1) + mbs_last * c.Pass(k) + (1 + mbs_last) * load.batched_us);
      r.verifications += p * (j + 1);
      break;
    }
  }
  return r;
}

}  // namespace pipeinfer::plan
