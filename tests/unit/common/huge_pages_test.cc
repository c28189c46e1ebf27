// HugePageBuffer (common/huge_pages.h): 2 MiB-aligned, zero-filled, writable anonymous memory,
// advised as transparent huge pages exactly when the kernel's mode allows it; the mode is read
// from sysfs; HugeBackedBytes counts only the buffer's own mapping.
#include "common/huge_pages.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

namespace pipeinfer {
namespace {

std::string SysfsLine() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  std::getline(in, line);
  return line;
}

TEST(HugePages, ModeIsTheBracketedWordOfSysfs) {
  const std::string mode = TransparentHugePageMode();
  const std::string line = SysfsLine();
  std::printf("sysfs: '%s', mode: '%s'\n", line.c_str(), mode.c_str());
  if (line.empty()) {
    EXPECT_EQ(mode, "");
    return;
  }
  EXPECT_TRUE(mode == "always" || mode == "madvise" || mode == "never") << mode;
  EXPECT_NE(line.find("[" + mode + "]"), std::string::npos);
}

TEST(HugePages, AlignedZeroedWritableAndAdvisedAsTheModeAllows) {
  constexpr size_t kMiB = size_t{1} << 20;
  auto b = HugePageBuffer::Allocate(5 * kMiB + 1);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->size(), 6 * kMiB);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % HugePageBuffer::kHugePage, 0u);
  for (size_t i = 0; i < b->size(); i += 4096) ASSERT_EQ(b->data()[i], 0) << i;
  std::memset(b->data(), 0x5a, b->size());
  EXPECT_EQ(b->data()[b->size() - 1], 0x5a);
  const std::string mode = TransparentHugePageMode();
  EXPECT_EQ(b->huge_pages(), mode == "always" || mode == "madvise") << mode;
  const uint64_t huge = b->HugeBackedBytes();
  std::printf("%llu of %zu bytes backed by huge pages (mode %s)\n",
              static_cast<unsigned long long>(huge), b->size(), mode.c_str());
  EXPECT_LE(huge, b->size());  // this mapping only, not the process's other huge pages
  EXPECT_EQ(huge % HugePageBuffer::kHugePage, 0u);
}

TEST(HugePages, EmptyAndMoved) {
  auto empty = HugePageBuffer::Allocate(0);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->data(), nullptr);
  EXPECT_EQ(empty->size(), 0u);
  EXPECT_EQ(empty->HugeBackedBytes(), 0u);

  auto a = HugePageBuffer::Allocate(1);
  ASSERT_TRUE(a.ok());
  uint8_t* const p = a->data();
  p[0] = 7;
  HugePageBuffer moved = std::move(*a);
  EXPECT_EQ(moved.data(), p);
  EXPECT_EQ(a->data(), nullptr);  // NOLINT(bugprone-use-after-move): the moved-from state
  EXPECT_EQ(moved.data()[0], 7);
  moved = HugePageBuffer();
  EXPECT_EQ(moved.data(), nullptr);
}

}  // namespace
}  // namespace pipeinfer
