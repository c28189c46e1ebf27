// Anonymous memory for data that is streamed over and over (a CPU stage's weights): a private
// mapping aligned to 2 MiB and advised as transparent huge pages (MADV_HUGEPAGE), so that the
// kernel backs it with 2 MiB pages where it can. Streaming reads then miss the TLB 512 times
// less often and the hardware prefetchers are not stopped at every 4 KiB boundary; on a 2-core
// AMD EPYC, decode of the same weights ran 6-24 % faster from such memory than from the file's
// 4 KiB page-cache mapping (bench/results/hugepages-2026-12-07.md). Not for the KV cache:
// attention reads its rows at power-of-two strides, which 2 MiB pages map onto the same cache
// sets (decode measured 10 % slower).
//
// Where transparent huge pages are off ("never"), the advice is refused and the memory is ordinary
// anonymous memory; huge_pages() says which.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace pipeinfer {

// The kernel's transparent huge page mode: "always", "madvise", "never", or "" when the kernel
// has none (the sysfs file is missing).
std::string TransparentHugePageMode();

class HugePageBuffer {
 public:
  static constexpr size_t kHugePage = size_t{2} << 20;

  // Reserves `bytes` (rounded up to 2 MiB) of zero-filled memory; pages are allocated when first
  // written. Fails only when the address space cannot be reserved.
  static absl::StatusOr<HugePageBuffer> Allocate(size_t bytes);

  HugePageBuffer() = default;
  HugePageBuffer(HugePageBuffer&& o) noexcept { *this = std::move(o); }
  HugePageBuffer& operator=(HugePageBuffer&& o) noexcept;
  HugePageBuffer(const HugePageBuffer&) = delete;
  HugePageBuffer& operator=(const HugePageBuffer&) = delete;
  ~HugePageBuffer() { Release(); }

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  // Whether the kernel accepted MADV_HUGEPAGE for the buffer.
  bool huge_pages() const { return huge_pages_; }
  // Bytes of the buffer the kernel currently backs with huge pages (AnonHugePages of its mapping
  // in /proc/self/smaps); 0 when unknown.
  uint64_t HugeBackedBytes() const;

 private:
  void Release();

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool huge_pages_ = false;
};

}  // namespace pipeinfer
