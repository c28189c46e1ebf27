#include "common/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pipeinfer {
namespace {

// Page-aligned [begin, end) covering [offset, offset+length) of a mapping of `size` bytes.
std::pair<uintptr_t, size_t> PageRange(const uint8_t* base, size_t size, uint64_t offset,
                                       uint64_t length) {
  if (offset >= size) return {0, 0};
  length = std::min<uint64_t>(length, size - offset);
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  uintptr_t begin = reinterpret_cast<uintptr_t>(base) + offset;
  uintptr_t end = begin + length;
  begin &= ~(page - 1);
  end = (end + page - 1) & ~(page - 1);
  return {begin, end - begin};
}

}  // namespace

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    std::string msg = absl::StrCat("cannot open '", path, "': ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(msg);
    if (err == EACCES) return absl::PermissionDeniedError(msg);
    return absl::UnavailableError(msg);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("cannot stat '", path, "': ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      return absl::UnavailableError(absl::StrCat("cannot mmap '", path, "': ", std::strerror(err)));
    }
    data = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping stays valid
  return std::unique_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

void MappedFile::AdviseWillNeed(uint64_t offset, uint64_t length) const {
  auto [begin, len] = PageRange(data_, size_, offset, length);
  if (len > 0) ::madvise(reinterpret_cast<void*>(begin), len, MADV_WILLNEED);
}

void MappedFile::AdviseDontNeed(uint64_t offset, uint64_t length) const {
  auto [begin, len] = PageRange(data_, size_, offset, length);
  if (len > 0) ::madvise(reinterpret_cast<void*>(begin), len, MADV_DONTNEED);
}

uint64_t CurrentRssBytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t total_pages = 0, resident_pages = 0;
  if (!(statm >> total_pages >> resident_pages)) return 0;
  return resident_pages * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace pipeinfer
