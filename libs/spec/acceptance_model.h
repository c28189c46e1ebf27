// Online estimates of how often a draft guess is accepted, for the dynamic token tree
// (docs/speculation.md). A guess is described by its rank among the draft's alternatives at its
// parent (1 = the draft's favourite) and the draft's probability q for it. Every verified node
// scores every alternative the draft proposed there (the target picked exactly one token, or none
// of them), so the estimates learn from each verification, not only from the guesses sent.
//
// Estimate = (accepted + k m) / (seen + k): a Beta prior of weight k centred on m = q, or for the
// draft's favourite m = (1 + q) / 2 (a draft is chosen because it agrees with its target, and
// small drafts are less confident than they are right), so an unseen bucket trusts the draft and
// a well-observed one trusts the data. Buckets are
// rank (1, 2, 3, 4+) x q in tenths. A session keeps its own counts and reads the cluster's (shared
// by every request of a draft service) at a lower weight, so a new request starts from what the
// service has seen and then follows its own text.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>

namespace pipeinfer::spec {

class AcceptanceCounts {
 public:
  static constexpr int kRanks = 4;
  static constexpr int kBins = 10;

  void Observe(int rank, float q, bool accepted);
  // Adds `other`'s counts scaled by `weight` into a copy of this one's and returns the estimate.
  double Estimate(int rank, float q, const AcceptanceCounts* other = nullptr,
                  double other_weight = 0.0) const;
  double seen(int rank, float q) const { return n_[Index(rank, q)]; }

 private:
  static int Index(int rank, float q);
  std::array<double, kRanks * kBins> n_{};
  std::array<double, kRanks * kBins> acc_{};
};

// The cluster-wide counts (thread-safe). Observations are batched per verification.
class SharedAcceptance {
 public:
  void Observe(int rank, float q, bool accepted);
  AcceptanceCounts Snapshot() const;

 private:
  mutable std::mutex mu_;
  AcceptanceCounts counts_;
};

}  // namespace pipeinfer::spec
