// Read-only memory mapping of a whole file (RAII). Pages are faulted in lazily, so mapping a large
// model costs nothing until its bytes are read; `Advise*` hint the kernel about ranges.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"

namespace pipeinfer {

class MappedFile {
 public:
  // Maps `path` read-only. Errors name the path and the failing system call.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

  // Asks the kernel to read [offset, offset+length) ahead (MADV_WILLNEED).
  void AdviseWillNeed(uint64_t offset, uint64_t length) const;
  // Tells the kernel the range is no longer needed by this process (MADV_DONTNEED); later reads
  // fault the pages in again from the page cache.
  void AdviseDontNeed(uint64_t offset, uint64_t length) const;

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Resident set size of the calling process in bytes (from /proc/self/statm), or 0 if unknown.
uint64_t CurrentRssBytes();

}  // namespace pipeinfer
