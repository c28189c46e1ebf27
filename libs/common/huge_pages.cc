#include "common/huge_pages.h"

#include <sys/mman.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace pipeinfer {

std::string TransparentHugePageMode() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!in || !std::getline(in, line)) return "";
  // The active mode is the bracketed word: "always [madvise] never".
  const size_t open = line.find('[');
  const size_t close = line.find(']', open);
  if (open == std::string::npos || close == std::string::npos) return "";
  return line.substr(open + 1, close - open - 1);
}

absl::StatusOr<HugePageBuffer> HugePageBuffer::Allocate(size_t bytes) {
  HugePageBuffer b;
  if (bytes == 0) return b;
  const size_t size = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  // Over-reserve by one huge page, then unmap the unaligned head and the tail.
  const size_t reserve = size + kHugePage;
  void* p = ::mmap(nullptr, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot reserve ", size, " bytes of memory: ", std::strerror(errno)));
  }
  const uintptr_t start = reinterpret_cast<uintptr_t>(p);
  const uintptr_t aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > start) ::munmap(p, aligned - start);
  const uintptr_t end = start + reserve;
  if (end > aligned + size) ::munmap(reinterpret_cast<void*>(aligned + size), end - aligned - size);
  b.data_ = reinterpret_cast<uint8_t*>(aligned);
  b.size_ = size;
  b.huge_pages_ = ::madvise(b.data_, size, MADV_HUGEPAGE) == 0;
  return b;
}

HugePageBuffer& HugePageBuffer::operator=(HugePageBuffer&& o) noexcept {
  if (this != &o) {
    Release();
    data_ = o.data_;
    size_ = o.size_;
    huge_pages_ = o.huge_pages_;
    o.data_ = nullptr;
    o.size_ = 0;
    o.huge_pages_ = false;
  }
  return *this;
}

void HugePageBuffer::Release() {
  if (data_ != nullptr) ::munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

uint64_t HugePageBuffer::HugeBackedBytes() const {
  if (data_ == nullptr) return 0;
  std::ifstream in("/proc/self/smaps");
  const uintptr_t lo = reinterpret_cast<uintptr_t>(data_), hi = lo + size_;
  std::string line;
  bool inside = false;
  uint64_t total = 0;
  while (std::getline(in, line)) {
    uintptr_t a = 0, b = 0;
    if (std::sscanf(line.c_str(), "%" SCNxPTR "-%" SCNxPTR " ", &a, &b) == 2 &&
        line.find(':') > line.find(' ')) {
      inside = a < hi && b > lo;  // a mapping header line ("start-end perms ...")
      continue;
    }
    unsigned long long kb = 0;
    if (inside && std::sscanf(line.c_str(), "AnonHugePages: %llu kB", &kb) == 1) {
      total += kb * 1024;
    }
  }
  return total;
}

}  // namespace pipeinfer
