#include "sampling/speculative.h"

#include <algorithm>
#include <utility>

namespace pipeinfer::sampling {
namespace {

// p and q over the union of their supports, in id order, in double precision, each normalized.
struct Joint {
  std::vector<int32_t> ids;
  std::vector<double> p;
  std::vector<double> q;

  // Index of `id`, or -1.
  int64_t Find(int32_t id) const {
    auto it = std::lower_bound(ids.begin(), ids.end(), id);
    if (it == ids.end() || *it != id) return -1;
    return it - ids.begin();
  }
};

std::vector<std::pair<int32_t, double>> ById(const SparseDist& d) {
  std::vector<std::pair<int32_t, double>> v;
  v.reserve(d.size());
  for (size_t i = 0; i < d.size(); ++i) {
    if (d.probs[i] > 0.0f) v.emplace_back(d.ids[i], d.probs[i]);
  }
  std::sort(v.begin(), v.end());
  return v;
}

void Normalize(std::vector<double>& w) {
  double total = 0.0;
  for (double x : w) total += x;
  if (total <= 0.0) return;
  for (double& x : w) x /= total;
}

Joint MakeJoint(const SparseDist& p, const SparseDist& q) {
  const auto a = ById(p);
  const auto b = ById(q);
  Joint j;
  j.ids.reserve(a.size() + b.size());
  size_t i = 0, k = 0;
  while (i < a.size() || k < b.size()) {
    int32_t id;
    if (k == b.size() || (i < a.size() && a[i].first < b[k].first)) {
      id = a[i].first;
    } else {
      id = b[k].first;
    }
    double pv = 0.0, qv = 0.0;
    while (i < a.size() && a[i].first == id) pv += a[i++].second;  // duplicates are summed
    while (k < b.size() && b[k].first == id) qv += b[k++].second;
    j.ids.push_back(id);
    j.p.push_back(pv);
    j.q.push_back(qv);
  }
  Normalize(j.p);
  Normalize(j.q);
  return j;
}

// Inverse CDF over `w` in index order; one Uniform() draw. -1 when `w` has no mass.
int64_t SampleIndex(const std::vector<double>& w, Rng& rng) {
  const double u = rng.Uniform();
  double total = 0.0;
  for (double x : w) total += x;
  if (total <= 0.0) return -1;
  const double target = u * total;
  double cum = 0.0;
  int64_t last_positive = -1;
  for (size_t i = 0; i < w.size(); ++i) {
    if (w[i] <= 0.0) continue;
    cum += w[i];
    last_positive = static_cast<int64_t>(i);
    if (cum > target) return last_positive;
  }
  return last_positive;  // rounding
}

// Below this total the residual is treated as empty (p_i == q_i up to rounding).
constexpr double kEmptyResidual = 1e-12;

}  // namespace

CandidatesResult AcceptDraftCandidates(const SparseDist& p, const SparseDist& q,
                                       std::span<const int32_t> candidates, Rng& rng) {
  Joint j = MakeJoint(p, q);
  CandidatesResult result;
  std::vector<double> residual(j.ids.size());
  for (size_t c = 0; c < candidates.size(); ++c) {
    const int64_t x = j.Find(candidates[c]);
    const double qx = x < 0 ? 0.0 : j.q[x];
    if (qx <= 0.0) break;  // not a possible draw from q_i: emit a token from p_i
    const double px = j.p[x];
    const double u = rng.Uniform();
    if (u * qx < px) {  // u < p_i(x) / q_i(x)
      result.accepted_index = static_cast<int32_t>(c);
      result.token = candidates[c];
      return result;
    }
    // Rejected: p_{i+1} = norm(max(0, p_i - q_i)), q_{i+1} = q_i without x, renormalized.
    double mass = 0.0;
    for (size_t k = 0; k < j.ids.size(); ++k) {
      residual[k] = std::max(0.0, j.p[k] - j.q[k]);
      mass += residual[k];
    }
    if (mass > kEmptyResidual) {
      for (size_t k = 0; k < j.ids.size(); ++k) j.p[k] = residual[k] / mass;
    }
    j.q[x] = 0.0;
    Normalize(j.q);
  }
  const int64_t pick = SampleIndex(j.p, rng);
  if (pick >= 0) result.token = j.ids[pick];
  return result;
}

AcceptResult AcceptDraftToken(const SparseDist& p, const SparseDist& q, int32_t draft_token,
                              Rng& rng) {
  const int32_t one[1] = {draft_token};
  const CandidatesResult r = AcceptDraftCandidates(p, q, one, rng);
  return AcceptResult{r.accepted_index == 0, r.token};
}

std::vector<int32_t> DraftCandidates(const SparseDist& q, int32_t k, Rng& rng) {
  std::vector<double> w(q.probs.begin(), q.probs.end());
  for (double& x : w) x = std::max(0.0, x);
  std::vector<int32_t> out;
  for (int32_t i = 0; i < k; ++i) {
    double total = 0.0;
    for (double x : w) total += x;
    if (total <= 0.0) break;
    const int64_t pick = SampleIndex(w, rng);
    if (pick < 0) break;
    out.push_back(q.ids[pick]);
    w[pick] = 0.0;
  }
  return out;
}

}  // namespace pipeinfer::sampling
