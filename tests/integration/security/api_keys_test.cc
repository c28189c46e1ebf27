// ApiKeys (router/api_keys.h): the constant-time comparison agrees with plain string equality on
// many random pairs, and the Authorization parsing accepts exactly "Bearer <configured key>".
#include "router/api_keys.h"

#include <cstdio>
#include <fstream>
#include <random>
#include <string>

#include <gtest/gtest.h>

namespace pipeinfer::router {
namespace {

TEST(ConstantTimeEquals, AgreesWithStringEquality) {
  std::mt19937 rng(17);
  std::uniform_int_distribution<int> len(0, 6), byte(0, 3);  // small alphabet: many near-misses
  for (int i = 0; i < 20000; ++i) {
    std::string a(len(rng), 'x'), b(len(rng), 'x');
    for (char& ch : a) ch = static_cast<char>('a' + byte(rng));
    for (char& ch : b) ch = static_cast<char>('a' + byte(rng));
    ASSERT_EQ(ConstantTimeEquals(a, b), a == b) << "'" << a << "' vs '" << b << "'";
    ASSERT_TRUE(ConstantTimeEquals(a, a));
  }
  // A presented key that is the expected one repeated must not match (cyclic indexing).
  EXPECT_FALSE(ConstantTimeEquals("abab", "ab"));
  EXPECT_FALSE(ConstantTimeEquals("", "ab"));
  EXPECT_FALSE(ConstantTimeEquals("ab", ""));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
}

TEST(ApiKeys, BearerHeaderChecks) {
  const ApiKeys none;
  EXPECT_TRUE(none.Check("").ok());  // no keys configured: open
  const ApiKeys k = ApiKeys::FromKeys({"sk-one", "sk-two"});
  EXPECT_TRUE(k.Check("Bearer sk-one").ok());
  EXPECT_TRUE(k.Check("bearer sk-two").ok());
  EXPECT_TRUE(k.Check("  Bearer   sk-two ").ok());
  for (const char* bad : {"", "sk-one", "Bearer", "Bearer ", "Bearer sk-on", "Bearer sk-one1",
                          "Basic sk-one", "Bearer sk-one sk-two", "Bearersk-one"}) {
    const absl::Status st = k.Check(bad);
    EXPECT_EQ(st.code(), absl::StatusCode::kUnauthenticated) << "'" << bad << "'";
    // The message never echoes what was presented.
    EXPECT_EQ(std::string(st.message()).find("sk-"), std::string::npos) << st.message();
  }
}

TEST(ApiKeys, FromFileSkipsBlankAndCommentLinesAndRefusesAnEmptyFile) {
  const std::string path = ::testing::TempDir() + "/api_keys_test.keys";
  {
    std::ofstream out(path);
    out << "# operators\n\n  sk-alpha  \nsk-beta\n";
  }
  auto k = ApiKeys::FromFile(path);
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_TRUE(k->Check("Bearer sk-alpha").ok());
  EXPECT_TRUE(k->Check("Bearer sk-beta").ok());
  EXPECT_FALSE(k->Check("Bearer # operators").ok());
  {
    std::ofstream out(path);
    out << "# nothing\n\n";
  }
  EXPECT_EQ(ApiKeys::FromFile(path).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApiKeys::FromFile(path + ".missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ApiKeys::FromFile("").ok());
  std::remove(path.c_str());
}

}  // namespace
}  // namespace pipeinfer::router
