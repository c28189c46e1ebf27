#include "spec/kv_demand.h"

namespace pipeinfer::spec {

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
  if (d.partitions > 0) d.reserve_tokens += (d.partitions + 1) * (2 * p.draft_max + 1);
  return d;
}

}  // namespace pipeinfer::spec
