#include "spec/top_k.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace pipeinfer::spec {

sampling::SparseDist DraftTopK(std::span<const float> logits, size_t k) {
  sampling::SparseDist d;
  if (logits.empty()) return d;
  float max_l = -INFINITY;
  for (float l : logits) max_l = std::max(max_l, l);
  double sum = 0.0;
  for (float l : logits) {
    if (std::isfinite(l)) sum += std::exp(static_cast<double>(l) - max_l);
  }
  if (!(sum > 0.0)) return d;
  std::vector<int32_t> idx(logits.size());
  std::iota(idx.begin(), idx.end(), 0);
  k = std::min(k, idx.size());
  std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
                    [&](int32_t a, int32_t b) {
                      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
                    });
  for (size_t i = 0; i < k; ++i) {
    d.ids.push_back(idx[i]);
    d.probs.push_back(
        static_cast<float>(std::exp(static_cast<double>(logits[idx[i]]) - max_l) / sum));
  }
  return d;
}

}  // namespace pipeinfer::spec
