// `pipeinfer plan`: the real binary's output format and its errors.
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "testing/fixtures.h"

namespace {

using pipeinfer::testing::BinPath;
using pipeinfer::testing::RunCommand;

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

TEST(PlanCli, PrintsOneLinePerModeThenRecommendations) {
  std::string out;
  const int rc = RunCommand(BinPath("pipeinfer") +
                                " plan --stages 8 --stage-us 10000 --token-us 500 --draft-us 0 "
                                "--agreement 0.8 --draft-max 4",
                            &out, /*merge_stderr=*/false);
  ASSERT_EQ(rc, 0) << out;
  const std::vector<std::string> lines = Lines(out);
  ASSERT_EQ(lines.size(), 7u) << out;
  const char* modes[] = {"plain", "sync", "pipeinfer"};
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(std::regex_match(lines[i], std::regex(std::string(modes[i]) + " [0-9]+\\.[0-9]")))
        << lines[i];
  }
  const char* knobs[] = {"draft_max ", "p_accept ", "max_inflight ", "stages "};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(lines[3 + i].rfind(knobs[i], 0), 0u) << lines[3 + i];
    EXPECT_NE(lines[3 + i].find(": "), std::string::npos) << lines[3 + i];  // with a reason
  }
}

TEST(PlanCli, ModelSizeInsteadOfStageTimes) {
  std::string out;
  ASSERT_EQ(RunCommand(BinPath("pipeinfer") +
                           " plan --stages 8 --model-gb 40 --node-gbps 50 --draft-gb 1 "
                           "--agreement 0.7 --draft-max 4 --link-mbps 1000 --link-us 100 "
                           "--n-embd 8192 --wire-dtype f16 --concurrency 4",
                       &out, false),
            0)
      << out;
  EXPECT_TRUE(std::regex_search(out, std::regex("^plain [0-9]+\\.[0-9]\n"))) << out;
}

TEST(PlanCli, BadValuesFailWithAMessage) {
  std::string out;
  EXPECT_EQ(RunCommand(BinPath("pipeinfer") + " plan --agreement 1.5", &out), 1);
  EXPECT_NE(out.find("error: agreement must be in [0, 1], got 1.5"), std::string::npos) << out;
  out.clear();
  EXPECT_EQ(RunCommand(BinPath("pipeinfer") + " plan --stages 0", &out), 1);
  EXPECT_NE(out.find("error: stages must be in [1, 1024], got 0"), std::string::npos) << out;
  out.clear();
  EXPECT_NE(RunCommand(BinPath("pipeinfer") + " plan --agreement lots", &out), 0);
  EXPECT_NE(out.find("agreement"), std::string::npos) << out;
  out.clear();
  EXPECT_EQ(
      RunCommand(BinPath("pipeinfer") + " plan --stage-us 100 --model-gb 40 --node-gbps 50", &out),
      1);
  EXPECT_NE(out.find("error: give either --stage-us/--token-us or a model size"), std::string::npos)
      << out;
  out.clear();
  EXPECT_EQ(RunCommand(BinPath("pipeinfer") + " plan --model-gb 40", &out), 1);
  EXPECT_NE(out.find("--node-gbps"), std::string::npos) << out;
}

}  // namespace
