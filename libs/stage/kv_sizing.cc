#include "stage/kv_sizing.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pipeinfer::stage {
namespace {

std::string Mib(uint64_t bytes) {
  return absl::StrFormat("%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
}

}  // namespace

KvSizing SizeKvCache(const KvSizingRequest& r) {
  KvSizing s;
  const uint64_t block_bytes = std::max<uint64_t>(1, r.shape.block_bytes());
  s.session_blocks = std::max<int64_t>(
      1, kv::ReservationBlocks(r.session_tokens, r.session_partitions, r.shape.block_tokens));
  s.blocks = s.session_blocks * std::max<uint32_t>(r.sessions, 1);
  if (r.memory_budget > 0 && static_cast<uint64_t>(s.blocks) * block_bytes > r.memory_budget) {
    s.blocks = std::max<int64_t>(1, static_cast<int64_t>(r.memory_budget / block_bytes));
    s.clipped = true;
  }
  s.bytes = static_cast<uint64_t>(s.blocks) * block_bytes;
  s.sessions_that_fit = static_cast<uint32_t>(s.blocks / s.session_blocks);
  return s;
}

std::string KvSizing::Describe(uint32_t stage_index, uint64_t memory_budget) const {
  std::string line = absl::StrCat(
      "stage ", stage_index, " KV cache: ", blocks, " blocks = ", Mib(bytes), " (",
      sessions_that_fit, " full-context requests of ", session_blocks, " blocks each at once");
  if (memory_budget > 0) absl::StrAppend(&line, "; budget ", Mib(memory_budget));
  absl::StrAppend(&line, ")");
  if (clipped) {
    absl::StrAppend(&line, " -- clipped by the memory budget (--kv-memory); requests beyond ",
                    sessions_that_fit, " wait for KV");
  }
  return line;
}

uint64_t DefaultKvMemoryBudget() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return 0;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) / 4;
}

}  // namespace pipeinfer::stage
