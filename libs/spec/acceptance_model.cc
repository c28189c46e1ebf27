#include "spec/acceptance_model.h"

#include <algorithm>

namespace pipeinfer::spec {
namespace {
// Weight of the prior (pseudo-observations at the draft's own confidence).
constexpr double kPriorWeight = 2.0;
}  // namespace

int AcceptanceCounts::Index(int rank, float q) {
  const int r = std::clamp(rank, 1, kRanks) - 1;
  const int b = std::clamp(static_cast<int>(q * kBins), 0, kBins - 1);
  return r * kBins + b;
}

void AcceptanceCounts::Observe(int rank, float q, bool accepted) {
  const int i = Index(rank, q);
  n_[i] += 1.0;
  if (accepted) acc_[i] += 1.0;
}

double AcceptanceCounts::Estimate(int rank, float q, const AcceptanceCounts* other,
                                  double other_weight) const {
  const int i = Index(rank, q);
  double n = n_[i], acc = acc_[i];
  if (other != nullptr && other_weight > 0.0) {
    n += other_weight * other->n_[i];
    acc += other_weight * other->acc_[i];
  }
  // Unseen, the draft's favourite is assumed right half the time or more (a draft is chosen for
  // agreeing with its target, and its probabilities are often flatter than its accuracy), the
  // others as often as the draft says.
  const double qq = std::clamp(static_cast<double>(q), 0.0, 1.0);
  const double prior = rank <= 1 ? 0.5 + 0.5 * qq : qq;
  return (acc + kPriorWeight * prior) / (n + kPriorWeight);
}

void SharedAcceptance::Observe(int rank, float q, bool accepted) {
  std::lock_guard<std::mutex> l(mu_);
  counts_.Observe(rank, q, accepted);
}

AcceptanceCounts SharedAcceptance::Snapshot() const {
  std::lock_guard<std::mutex> l(mu_);
  return counts_;
}

}  // namespace pipeinfer::spec
