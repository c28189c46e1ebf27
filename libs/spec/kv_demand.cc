#include "spec/kv_demand.h"

#include <algorithm>

namespace pipeinfer::spec {

uint32_t TreeSlotCap(const SpecParams& p, uint32_t n_stages) {
  const uint32_t inflight = p.max_inflight != 0 ? p.max_inflight : DefaultMaxInflight(n_stages);
  return std::clamp<uint32_t>(2 * EffectiveDraftMax(p) * inflight, 64, 1024);
}

KvDemand KvDemandOf(const SpecParams& p, uint32_t max_context, uint32_t n_stages) {
  KvDemand d;
  d.reserve_tokens = max_context;
  switch (p.mode) {
    case Mode::kPlain:
      d.partitions = 0;
      break;
    case Mode::kSync:
      d.partitions = 1;
      break;
    case Mode::kPipeInfer:
      d.partitions = (p.max_inflight != 0 ? p.max_inflight : DefaultMaxInflight(n_stages)) + 1;
      break;
  }
  if (d.partitions == 0) return d;
  if (!p.paper_tree && p.mode == Mode::kPipeInfer) {
    // The dynamic tree: one tree partition of at most TreeSlotCap private slots, the partition a
    // commit copies from while the next tree starts, and canonical's copy.
    d.partitions = 2;
    d.reserve_tokens += 3 * TreeSlotCap(p, n_stages);
    return d;
  }
  d.reserve_tokens += (d.partitions + 1) * (2 * EffectiveDraftMax(p) + 1);
  return d;
}

}  // namespace pipeinfer::spec
