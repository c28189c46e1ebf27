// `pipeinfer bench --scenario bench/scenarios/smoke.yaml --out-dir DIR` makes every file the
// scenario runner promises (results.csv with one line per row x mode x repeat, itl.csv, report.md,
// the PNG plots) and leaves no cluster behind; a scenario file with an unknown key or a bad value
// is refused with the key's path.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "testing/cluster_harness.h"
#include "testing/fixtures.h"

namespace pipeinfer {
namespace {

namespace fs = std::filesystem;
using pipeinfer::testing::BinPath;
using pipeinfer::testing::CommandResult;
using pipeinfer::testing::ReadText;
using pipeinfer::testing::RunCmd;

const std::string kSmoke = std::string(PIPEINFER_SOURCE_DIR) + "/bench/scenarios/smoke.yaml";

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// Fields of a CSV line (quoted fields may hold commas).
size_t CsvFields(const std::string& line) {
  size_t n = 1;
  bool quoted = false;
  for (char c : line) {
    if (c == '"') quoted = !quoted;
    if (c == ',' && !quoted) ++n;
  }
  return n;
}

bool IsPng(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char magic[8] = {};
  f.read(magic, 8);
  static const unsigned char kMagic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  return f.gcount() == 8 && std::equal(magic, magic + 8, reinterpret_cast<const char*>(kMagic)) &&
         fs::file_size(path) > 1000;
}

class ScenarioTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/scenario_smoke_test." + std::to_string(getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string dir_;
};

TEST_F(ScenarioTest, SmokeScenarioWritesEveryFile) {
  if (!fs::exists(BinPath("pipeinfer-router"))) {
    GTEST_SKIP() << BinPath("pipeinfer-router") << " is not built";
  }
  const std::string out = dir_ + "/out";
  const CommandResult r =
      RunCmd({BinPath("pipeinfer"), "bench", "--scenario", kSmoke, "--out-dir", out},
             std::chrono::seconds(180));
  ASSERT_EQ(r.exit_code, 0) << r.output;

  // 2 agreements x 2 concurrency levels = 4 rows, x 3 modes x 1 repeat, plus the header.
  const std::vector<std::string> csv = Lines(ReadText(out + "/results.csv"));
  ASSERT_EQ(csv.size(), 1u + 4 * 3) << ReadText(out + "/results.csv");
  const size_t columns = CsvFields(csv[0]);
  EXPECT_EQ(columns, 30u) << csv[0];
  for (const char* column :
       {"stages", "stage_us", "token_us", "draft_us", "agreement", "link_mbps", "link_us",
        "concurrency", "mode", "repeat", "knobs", "tokens_per_s", "ttft_p50_ms", "ttft_p99_ms",
        "itl_p50_ms", "itl_p99_ms", "acceptance", "errors", "predicted_tokens_per_s"}) {
    EXPECT_NE(csv[0].find(column), std::string::npos) << column;
  }
  for (size_t i = 1; i < csv.size(); ++i) {
    EXPECT_EQ(CsvFields(csv[i]), columns) << csv[i];
    EXPECT_NE(csv[i].find(",yes,ok,"), std::string::npos) << csv[i];  // identical tokens, ok
  }
  EXPECT_GT(Lines(ReadText(out + "/itl.csv")).size(), 12u);

  const std::string report = ReadText(out + "/report.md");
  for (const char* part :
       {"- commit:", "- machine:", "- command: `pipeinfer bench --scenario", "emulated",
        "## All rows", "## By agreement", "## By concurrency", "## Predicted vs measured",
        "median |error|", "## Scenario file", "name: smoke"}) {
    EXPECT_NE(report.find(part), std::string::npos) << part << "\n" << report;
  }
  for (const std::string png : {"speedup_agreement.png", "speedup_concurrency.png",
                                "throughput.png", "ttft.png", "itl_cdf.png"}) {
    EXPECT_TRUE(IsPng(out + "/" + png)) << png;
    EXPECT_NE(report.find("](" + png + ")"), std::string::npos) << png;
  }
  // Both clusters went down: their state files are gone.
  EXPECT_FALSE(fs::exists(out + "/state-1.json"));
  EXPECT_FALSE(fs::exists(out + "/state-2.json"));
}

TEST_F(ScenarioTest, BadScenarioFilesAreRefusedWithTheKey) {
  const std::string models = std::string(PIPEINFER_SOURCE_DIR) + "/models";
  const std::string head = "cluster:\n  model: " + models +
                           "/demo-target-q8_0.gguf\n  draft_model: " + models +
                           "/demo-draft-q8_0.gguf\n";
  const struct {
    std::string body, message;
  } kCases[] = {
      {"bogus: 1\n", "unknown key 'bogus'"},
      {"bench:\n  max_token: 16\n", "bench: unknown key 'max_token'"},
      {"axes:\n  agreement: [0.5, 1.5]\n", "axes.agreement[1]: must be in [0, 1]"},
      {"axes:\n  link: [{mbps: 10, latency: 5}]\n", "axes.link[0]: unknown key 'latency'"},
      {"bench:\n  modes: [plain, turbo]\n", "bench.modes[1]: unknown mode 'turbo'"},
      {"bench:\n  knobs: {draft_max: 0}\n", "bench.knobs.draft_max"},
      {"rows:\n  - {stages: 2, colour: red}\n", "rows[0]: unknown key 'colour'"},
      {"groups:\n  - {name: a, axes: {stages: [2]}}\n", "no group named 'b'"},
  };
  int i = 0;
  for (const auto& c : kCases) {
    const std::string file = dir_ + "/bad" + std::to_string(i++) + ".yaml";
    std::ofstream(file) << head << c.body;
    std::vector<std::string> argv = {BinPath("pipeinfer"), "bench", "--scenario", file,
                                     "--estimate"};
    if (c.message.find("no group") != std::string::npos) {
      argv.insert(argv.end(), {"--only", "b"});
    }
    const CommandResult r = RunCmd(argv, std::chrono::seconds(30));
    EXPECT_NE(r.exit_code, 0) << c.body;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.body << "\n" << r.output;
  }
}

}  // namespace
}  // namespace pipeinfer
