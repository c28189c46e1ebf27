// The router's HTTP limits on real processes (two tiny-f32 stages, the draft service, a router
// started with --max-body-bytes 65536 --max-prompt-chars 200):
//   * a body over the limit gets 413 with an OpenAI error body at once, whether it is announced by
//     Content-Length (also with "Expect: 100-continue", then without being sent at all) or sent
//     chunked, and the router keeps serving;
//   * a prompt one byte over --max-prompt-chars gets 400 "context_length_exceeded" naming the
//     flag, one exactly at it is served (completions: the prompt; chat: the rendered template);
//   * the HTTP socket listens with a backlog >= 128 (ss shows it as Send-Q), not cpp-httplib's 5.
#include <httplib.h>

#include <chrono>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "gguf/llama.h"
#include "gguf/reader.h"
#include "router_cluster.h"

namespace pipeinfer {
namespace {

using json = nlohmann::json;
using pipeinfer::testing::ConnectLoopback;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::PostRequest;
using pipeinfer::testing::ReadSome;
using pipeinfer::testing::RouterCluster;
using pipeinfer::testing::RunCommand;
using pipeinfer::testing::SendAll;
using Clock = std::chrono::steady_clock;

constexpr size_t kMaxBody = 64 << 10;
constexpr size_t kMaxPrompt = 200;

std::unique_ptr<RouterCluster> cluster;

class RouterLimitsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster =
        pipeinfer::testing::StartRouterCluster("router_limits_test", {},
                                               {"--max-body-bytes", std::to_string(kMaxBody),
                                                "--max-prompt-chars", std::to_string(kMaxPrompt)});
  }
  static void TearDownTestSuite() {
    if (!cluster) return;
    EXPECT_EQ(cluster->services->Stop("router"), 0) << cluster->services->Log("router");
    cluster->services->Finish();
    cluster.reset();
  }
  void SetUp() override { ASSERT_NE(cluster, nullptr) << "the processes did not start"; }

  static httplib::Client Client() {
    httplib::Client c("127.0.0.1", cluster->http_port);
    c.set_read_timeout(30, 0);
    return c;
  }
  // An OpenAI error body with `status` and `code`; returns the message.
  static std::string ExpectError(const httplib::Result& r, int status, const std::string& code) {
    if (!r) {
      ADD_FAILURE() << "no response: " << httplib::to_string(r.error());
      return "";
    }
    EXPECT_EQ(r->status, status) << r->body;
    EXPECT_NE(r->get_header_value("Content-Type").find("application/json"), std::string::npos);
    const json j = json::parse(r->body, nullptr, false);
    if (!j.is_object() || !j.contains("error") || !j["error"]["message"].is_string()) {
      ADD_FAILURE() << "not an OpenAI error body: " << r->body;
      return "";
    }
    for (const char* k : {"message", "type", "param", "code"}) EXPECT_TRUE(j["error"].contains(k));
    EXPECT_EQ(j["error"]["code"], code) << r->body;
    return j["error"]["message"];
  }
  static void ExpectServing() {
    auto r = Client().Post("/v1/completions", json{{"prompt", "Hello"}, {"max_tokens", 2}}.dump(),
                           "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
  }
};

TEST_F(RouterLimitsTest, BodyOverTheLimitGets413AtOnce) {
  // 1 MiB of valid JSON: the size alone decides.
  const std::string big = json{{"prompt", std::string(1 << 20, 'a')}, {"max_tokens", 1}}.dump();
  auto t0 = Clock::now();
  const std::string message = ExpectError(Client().Post("/v1/completions", big, "application/json"),
                                          413, "request_too_large");
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(1));
  EXPECT_NE(message.find("--max-body-bytes"), std::string::npos) << message;
  EXPECT_NE(message.find(std::to_string(big.size())), std::string::npos) << message;
  ExpectServing();

  // Chunked: no length up front; refused once the limit is passed.
  auto c = Client();
  size_t sent = 0;
  t0 = Clock::now();
  auto r = c.Post(
      "/v1/chat/completions",
      [&](size_t, httplib::DataSink& sink) {
        const std::string piece(16 << 10, ' ');
        if (sent >= big.size()) {
          sink.done();
          return true;
        }
        sent += piece.size();
        return sink.write(piece.data(), piece.size());
      },
      "application/json");
  ExpectError(r, 413, "request_too_large");
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(1));
  ExpectServing();
}

TEST_F(RouterLimitsTest, ExpectContinueBodyOverTheLimitIsNeverSent) {
  const int fd = ConnectLoopback(cluster->http_port);
  ASSERT_GE(fd, 0);
  std::string head = PostRequest("/v1/chat/completions", "", "Expect: 100-continue\r\n");
  head.replace(head.find("Content-Length: 0"), 17, "Content-Length: 104857600");  // 100 MiB
  const auto t0 = Clock::now();
  ASSERT_TRUE(SendAll(fd, head));
  const std::string got = ReadSome(fd, "}}", std::chrono::seconds(5));
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(1));
  close(fd);
  EXPECT_EQ(got.rfind("HTTP/1.1 413", 0), 0u) << got;
  const size_t body = got.find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos) << got;
  const json j = json::parse(got.substr(body + 4), nullptr, false);
  ASSERT_TRUE(j.is_object()) << got;
  EXPECT_EQ(j["error"]["code"], "request_too_large");
  ExpectServing();
}

TEST_F(RouterLimitsTest, PromptTextBoundBeforeTokenizing) {
  const std::string at_limit = std::string(kMaxPrompt - 1, 'a') + ".";
  auto r = Client().Post("/v1/completions", json{{"prompt", at_limit}, {"max_tokens", 1}}.dump(),
                         "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  const std::string message = ExpectError(
      Client().Post("/v1/completions", json{{"prompt", at_limit + "b"}, {"max_tokens", 1}}.dump(),
                    "application/json"),
      400, "context_length_exceeded");
  EXPECT_NE(message.find("--max-prompt-chars"), std::string::npos) << message;
  EXPECT_NE(message.find(std::to_string(kMaxPrompt + 1)), std::string::npos) << message;

  // Chat counts the rendered conversation: the content plus the template around it.
  auto file = gguf::GgufFile::Open(FixturePath("models/tiny-f32.gguf"));
  ASSERT_TRUE(file.ok());
  auto meta = gguf::TokenizerMetadata::FromGguf(**file);
  ASSERT_TRUE(meta.ok());
  const chat::TemplateId t = chat::DetectTemplate(meta->chat_template.value_or(""));
  const std::vector<chat::ChatMessage> probe = {{"user", ""}};
  auto empty = chat::Render(t, probe, /*add_generation_prompt=*/true);
  ASSERT_TRUE(empty.ok());
  ASSERT_LT(empty->size(), kMaxPrompt);
  const std::string content(kMaxPrompt - empty->size(), 'x');
  const auto chat_body = [](const std::string& c) {
    return json{{"messages", {{{"role", "user"}, {"content", c}}}}, {"max_tokens", 1}}.dump();
  };
  r = Client().Post("/v1/chat/completions", chat_body(content), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  ExpectError(Client().Post("/v1/chat/completions", chat_body(content + "x"), "application/json"),
              400, "context_length_exceeded");
}

TEST_F(RouterLimitsTest, ListenBacklogIsRaised) {
  std::string out;
  if (RunCommand("ss -V", &out) != 0) GTEST_SKIP() << "ss (iproute2) is not installed";
  out.clear();
  ASSERT_EQ(RunCommand("ss -Hltn 'sport = :" + std::to_string(cluster->http_port) + "'", &out), 0)
      << out;
  // "LISTEN 0 512 127.0.0.1:PORT 0.0.0.0:*": for a listening socket Send-Q is the backlog.
  std::istringstream in(out);
  std::string state;
  long recv_q = -1, send_q = -1;
  in >> state >> recv_q >> send_q;
  EXPECT_EQ(state, "LISTEN") << out;
  EXPECT_GE(send_q, 128) << out;
}

}  // namespace
}  // namespace pipeinfer
