#include "draft_server/oracle_noise.h"

#include <algorithm>
#include <numeric>
#include <utility>
#include <vector>

namespace pipeinfer::draft_server {
namespace {

uint64_t Mix(uint64_t x) {  // a 64-bit finalizer: independent-looking bits from one hash
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

double Unit(uint64_t x) { return static_cast<double>(x >> 11) * 0x1.0p-53; }  // [0, 1)

}  // namespace

uint64_t SequenceHash(std::span<const int32_t> sequence) {
  uint64_t h = 0x9e3779b97f4a7c15ull;
  for (int32_t t : sequence) {
    h ^= static_cast<uint64_t>(t) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
  }
  return h;
}

int32_t ApplyDraftNoise(std::span<float> logits, uint64_t h, double noise, RankModel model) {
  if (noise <= 0.0 || logits.size() < 2) return 1;
  if (!(static_cast<double>(h % 1000000) < noise * 1e6)) return 1;
  const size_t n = logits.size();
  const size_t top =
      static_cast<size_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  if (model == RankModel::kUniform) {
    // The original --draft-noise, bit for bit.
    const size_t other = ((h >> 20) % (n - 1) + 1 + top) % n;
    std::swap(logits[top], logits[other]);
    return 1 + static_cast<int32_t>(std::count_if(logits.begin(), logits.end(),
                                                  [&](float x) { return x > logits[top]; }));
  }
  const int32_t r = DrawWrongRank(DemoRankBuckets(), Unit(Mix(h ^ 0x5bd1e995ull)),
                                  Unit(Mix(h ^ 0x27d4eb2f165667c5ull)), static_cast<int32_t>(n));
  // The r best tokens, best first (ties by id, so the order is deterministic).
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + r, order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  // Rotate the values: rank k+1's token takes rank k's value, the top token takes rank r's.
  const float last = logits[order[r - 1]];
  for (int32_t k = r - 1; k >= 1; --k) logits[order[k]] = logits[order[k - 1]];
  logits[order[0]] = last;
  // A wrong draft is less sure of itself: temper (the order, hence the ranks, stays).
  const float inv_t = static_cast<float>(1.0 / DemoWrongTemperature());
  for (float& x : logits) x *= inv_t;
  return r;
}

}  // namespace pipeinfer::draft_server
