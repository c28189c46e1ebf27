// The default size of a stage's KV cache (docs/architecture.md section 5): enough blocks for
// `sessions` requests that each reserve what a full-context request with the default speculation
// headroom reserves, within a memory budget. Never "one context": a stage sized for one request
// refuses the second.
#pragma once

#include <cstdint>
#include <string>

#include "kv/kv_cache.h"

namespace pipeinfer::stage {

struct KvSizingRequest {
  kv::KvConfig shape;           // layers, row width, element type and block size of this stage
  uint32_t sessions = 8;        // concurrent full-context requests to hold
  uint32_t session_tokens = 0;  // token slots one of them reserves (SessionOpen.kv_reserve_tokens)
  uint32_t session_partitions = 0;  // and its most live partitions (SessionOpen.max_partitions)
  uint64_t memory_budget = 0;       // bytes the cache may take; 0 = no limit
};

struct KvSizing {
  int64_t blocks = 0;              // the cache's size
  int64_t session_blocks = 0;      // what one request reserves
  uint64_t bytes = 0;              // blocks * block bytes
  uint32_t sessions_that_fit = 0;  // full-context requests that fit at once
  bool clipped = false;            // the memory budget made it smaller than asked
  // One line for the start-up log.
  std::string Describe(uint32_t stage_index, uint64_t memory_budget) const;
};

KvSizing SizeKvCache(const KvSizingRequest& r);

// A quarter of the machine's physical memory (the default budget).
uint64_t DefaultKvMemoryBudget();

}  // namespace pipeinfer::stage
