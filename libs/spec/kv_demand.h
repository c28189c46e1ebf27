// What one request needs from the stages' KV caches at worst (docs/architecture.md section 5), in
// the terms of stage.proto SessionOpen: token slots to reserve and the most live partitions. No
// gRPC, no engine: the draft service admits requests with it and a stage sizes its default cache
// with it.
#pragma once

#include <cstdint>

#include "spec/params.h"

namespace pipeinfer::spec {

struct KvDemand {
  uint32_t reserve_tokens = 0;  // SessionOpen.kv_reserve_tokens
  uint32_t partitions = 0;      // SessionOpen.max_partitions
};

// Canonical up to `max_context`, plus for the speculative modes (pipeinfer's dynamic tree: two
// partitions of TreeSlotCap slots and one more for canonical's copy; otherwise) P partitions (the
// most the controller keeps live: none for plain, one for sync, max_inflight + 1 for pipeinfer) of
// at most T = 2 * draft_max + 1 private tokens each (a micro-batch's tokens, the non-contiguous
// tail of the path it forks, a sync run's committed lead token), and one T more for the copy a
// commit makes before it drops the old canonical. The dynamic token tree's partition holds at most
// this many private slots (the nodes sent since the tree started); when it is full the controller
// sends no more runs into it until the next verification restarts the tree.
uint32_t TreeSlotCap(const SpecParams& params, uint32_t n_stages);

KvDemand KvDemandOf(const SpecParams& params, uint32_t max_context, uint32_t n_stages);

}  // namespace pipeinfer::spec
