// Two real pipeinfer-stage processes (tiny-f32 split in two), one pipeinfer-draft and one
// pipeinfer-router on loopback, driven through the router's OpenAI-compatible HTTP API: greedy
// completions reproduce llama.cpp's ids as text, SSE streams are well-formed OpenAI chunks, chat
// works with the chatml default template, bad requests get OpenAI-style errors, and a client that
// disconnects mid-stream leaves no KV blocks on the stages.
//
// Text comparison: the expected text is the reference ids run through the same
// IncrementalDetokenizer the router uses (Push per id, then Flush), which is well-formed UTF-8
// by construction (ill-formed bytes of the byte vocab become U+FFFD on both sides).
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "gguf/reader.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "pipeinfer/v1/router.grpc.pb.h"
#include "pipeinfer/v1/stage.grpc.pb.h"
#include "testing/fixtures.h"
#include "testing/grpc_health.h"
#include "testing/process.h"
#include "testing/service_group.h"
#include "tokenizer/tokenizer.h"

namespace pipeinfer {
namespace {

using json = nlohmann::json;
using pipeinfer::testing::BinPath;
using pipeinfer::testing::ChildProcess;
using pipeinfer::testing::DraftPipeline;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::FreeLoopbackAddress;
using pipeinfer::testing::FreePort;
using pipeinfer::testing::ReadIds;
using pipeinfer::testing::ReadText;
using pipeinfer::testing::ServiceGroup;
using pipeinfer::testing::StartDraftPipeline;
using pipeinfer::testing::StartServiceGroup;
using pipeinfer::testing::WaitServing;
using Clock = std::chrono::system_clock;

v1::StageInfo StageInfo(const std::string& addr) {
  auto stub = v1::Stage::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(Clock::now() + std::chrono::seconds(10));
  v1::StageInfo info;
  EXPECT_TRUE(stub->GetInfo(&ctx, v1::StageInfoRequest(), &info).ok());
  return info;
}

// Opens a raw connection, sends a streaming completion request and reads until `events` data
// events arrived. Returns the socket (the caller closes it to disconnect) or -1.
int StartStream(int port, const json& body, size_t events) {
  const std::string payload = body.dump();
  const std::string request =
      "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      "Content-Type: application/json\r\nContent-Length: " +
      std::to_string(payload.size()) + "\r\n\r\n" + payload;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  // A small receive buffer: a client that stops reading soon blocks the router's writes, so the
  // request keeps its admission slot for as long as the test holds the connection.
  const int rcvbuf = 1024;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      send(fd, request.data(), request.size(), 0) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return -1;
  }
  std::string got;
  char buf[4096];
  size_t n_events = 0;
  while (n_events < events) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      close(fd);
      return -1;
    }
    got.append(buf, n);
    n_events = 0;
    for (size_t p = got.find("data: "); p != std::string::npos; p = got.find("data: ", p + 1)) {
      ++n_events;
    }
  }
  return fd;
}

struct Cluster {
  std::string addr0, addr1, draft, grpc;
  int http_port = 0;
  std::unique_ptr<ServiceGroup> services;
};

std::unique_ptr<Cluster> cluster;

class RouterHttpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string model = FixturePath("models/tiny-f32.gguf");
    auto c = std::make_unique<Cluster>();
    c->services = StartServiceGroup("router_http_test", [&](ServiceGroup& g) {
      DraftPipeline p;
      if (!StartDraftPipeline(g, model, p)) return false;
      c->addr0 = p.stage0;
      c->addr1 = p.stage1;
      c->draft = p.draft;
      c->grpc = FreeLoopbackAddress();
      c->http_port = FreePort();
      return g.Start(
          "router",
          {BinPath("pipeinfer-router"), "--http", "127.0.0.1:" + std::to_string(c->http_port),
           "--grpc", c->grpc, "--draft", c->draft, "--model", model},
          c->grpc);
    });
    if (c->services) cluster = std::move(c);
  }
  static void TearDownTestSuite() {
    if (!cluster) return;
    EXPECT_EQ(cluster->services->Stop("router"), 0) << cluster->services->Log("router");
    EXPECT_EQ(cluster->services->Stop("draft"), 0) << cluster->services->Log("draft");
    cluster->services->Finish();
    cluster.reset();
  }
  void SetUp() override { ASSERT_NE(cluster, nullptr) << "the processes did not start"; }

  static httplib::Client Client() {
    httplib::Client c("127.0.0.1", cluster->http_port);
    c.set_read_timeout(60, 0);
    return c;
  }
  static httplib::Result Post(const std::string& path, const std::string& body) {
    auto c = Client();
    return c.Post(path.c_str(), body, "application/json");
  }
  // An OpenAI-style error body with the given status.
  static void ExpectError(const httplib::Result& r, int status) {
    ASSERT_TRUE(r) << "no response";
    EXPECT_EQ(r->status, status) << r->body;
    const json j = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r->body;
    ASSERT_TRUE(j.contains("error")) << r->body;
    for (const char* k : {"message", "type", "param", "code"}) {
      EXPECT_TRUE(j["error"].contains(k)) << k << " missing in " << r->body;
    }
    EXPECT_TRUE(j["error"]["message"].is_string());
  }
};

std::string PromptText() { return ReadText(FixturePath("prompts/p1.txt")); }

TEST_F(RouterHttpTest, GreedyCompletionMatchesReference) {
  const std::string model = FixturePath("models/tiny-f32.gguf");
  auto file = gguf::GgufFile::Open(model);
  ASSERT_TRUE(file.ok());
  auto tok = tokenizer::Tokenizer::FromGguf(**file);
  ASSERT_TRUE(tok.ok());
  const auto prompt_ids = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  const auto want = ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"));
  ASSERT_EQ(want.size(), 32u);
  // The router tokenizes raw completions like this (add_bos per the model, parse_special false).
  ASSERT_EQ((*tok)->Encode(PromptText(), (*tok)->add_bos(), false), prompt_ids);
  tokenizer::IncrementalDetokenizer detok(**tok);
  std::string want_text;
  for (int32_t id : want) want_text += detok.Push(id);
  want_text += detok.Flush();

  json body{
      {"model", "tiny-f32"}, {"prompt", PromptText()}, {"max_tokens", 32}, {"temperature", 0}};
  auto r = Post("/v1/completions", body.dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body << cluster->services->Log("router");
  const json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "tiny-f32");
  EXPECT_EQ(j["choices"][0]["text"], want_text);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["completion_tokens"], 32);
  EXPECT_EQ(j["usage"]["prompt_tokens"], prompt_ids.size());
  EXPECT_EQ(j["usage"]["total_tokens"], prompt_ids.size() + 32);

  // The same request streamed gives the same text.
  body["stream"] = true;
  r = Post("/v1/completions", body.dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  std::string text;
  std::istringstream in(r->body);
  std::string line, finish;
  bool done = false;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    ASSERT_EQ(line.rfind("data: ", 0), 0u) << line;
    ASSERT_FALSE(done) << "data after [DONE]";
    const std::string data = line.substr(6);
    if (data == "[DONE]") {
      done = true;
      continue;
    }
    const json c = json::parse(data);
    EXPECT_EQ(c["object"], "text_completion");
    text += c["choices"][0]["text"].get<std::string>();
    if (!c["choices"][0]["finish_reason"].is_null()) finish = c["choices"][0]["finish_reason"];
  }
  EXPECT_TRUE(done);
  EXPECT_EQ(text, want_text);
  EXPECT_EQ(finish, "length");
}

TEST_F(RouterHttpTest, StreamedChatIsWellFormed) {
  json body{{"model", "tiny-f32"},
            {"messages", {{{"role", "user"}, {"content", "Hello there"}}}},
            {"max_tokens", 8},
            {"temperature", 0},
            {"stream", true}};
  auto r = Post("/v1/chat/completions", body.dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  // Events are separated by blank lines.
  std::vector<std::string> events;
  size_t pos = 0;
  while (pos < r->body.size()) {
    const size_t end = r->body.find("\n\n", pos);
    ASSERT_NE(end, std::string::npos) << "unterminated event: " << r->body.substr(pos);
    events.push_back(r->body.substr(pos, end - pos));
    pos = end + 2;
  }
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "data: [DONE]");
  std::string finish;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    ASSERT_EQ(events[i].rfind("data: ", 0), 0u) << events[i];
    const json c = json::parse(events[i].substr(6), nullptr, false);
    ASSERT_TRUE(c.is_object()) << events[i];
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    ASSERT_TRUE(c["choices"].is_array());
    const auto& ch = c["choices"][0];
    if (i == 0) {
      EXPECT_EQ(ch["delta"]["role"], "assistant");
    }
    if (!ch["finish_reason"].is_null()) {
      EXPECT_EQ(i + 2, events.size()) << "finish_reason before the last chunk";
      finish = ch["finish_reason"];
    }
  }
  EXPECT_EQ(finish, "length");

  // Non-streaming chat.
  body["stream"] = false;
  r = Post("/v1/chat/completions", body.dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_TRUE(j["choices"][0]["message"]["content"].is_string());
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["completion_tokens"], 8);
}

TEST_F(RouterHttpTest, StopSequenceTruncates) {
  // Greedy output of the reference prompt, then stop at a piece of it.
  json body{{"prompt", PromptText()}, {"max_tokens", 32}, {"temperature", 0}};
  auto r = Post("/v1/completions", body.dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const std::string full = json::parse(r->body)["choices"][0]["text"];
  // A stop sequence of two ASCII characters from inside the text (the byte vocab may produce
  // U+FFFD and other multi-byte characters, which must not be cut).
  std::string stop;
  for (size_t i = 1; i + 1 < full.size() && stop.empty(); ++i) {
    if (static_cast<unsigned char>(full[i]) < 0x80 &&
        static_cast<unsigned char>(full[i + 1]) < 0x80) {
      stop = full.substr(i, 2);
    }
  }
  if (stop.empty()) GTEST_SKIP() << "no ASCII pair in the greedy text";
  const size_t at = full.find(stop);
  body["stop"] = json::array({stop, "never-seen-xyz"});
  r = Post("/v1/completions", body.dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  EXPECT_EQ(j["choices"][0]["text"], full.substr(0, at));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
}

TEST_F(RouterHttpTest, BadRequestsGetOpenAiErrors) {
  ExpectError(Post("/v1/completions", "{\"prompt\": \"abc\", "), 400);
  ExpectError(Post("/v1/chat/completions", "[1, 2]"), 400);
  json ok_chat{{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 4}};
  json b = ok_chat;
  b["n"] = 2;
  ExpectError(Post("/v1/chat/completions", b.dump()), 400);
  b = ok_chat;
  b["model"] = "no-such-model";
  ExpectError(Post("/v1/chat/completions", b.dump()), 404);
  b = ok_chat;
  b["temperature"] = 5;
  ExpectError(Post("/v1/chat/completions", b.dump()), 400);
  b = ok_chat;
  b["temperature"] = "hot";
  ExpectError(Post("/v1/chat/completions", b.dump()), 400);
  b = ok_chat;
  b["max_tokens"] = 0;
  ExpectError(Post("/v1/chat/completions", b.dump()), 400);
  b = ok_chat;
  b["stop"] = json::array({"a", "b", "c", "d", "e"});
  ExpectError(Post("/v1/chat/completions", b.dump()), 400);
  b = ok_chat;
  b["messages"][0]["role"] = "wizard";
  ExpectError(Post("/v1/chat/completions", b.dump()), 400);
  // Invalid UTF-8 inside a JSON string.
  ExpectError(Post("/v1/completions", std::string("{\"prompt\": \"a\xff\xfe b\"}")), 400);

  // Longer than the context (512 for the draft service's pipeline).
  json longp{{"prompt", std::string(3000, 'a')}, {"max_tokens", 4}};
  auto r = Post("/v1/completions", longp.dump());
  ExpectError(r, 400);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "context_length_exceeded");
  // The prompt fits, but not with max_tokens.
  longp = json{{"prompt", PromptText()}, {"max_tokens", 100000}};
  r = Post("/v1/completions", longp.dump());
  ExpectError(r, 400);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "context_length_exceeded");
  // Beyond 32 bits: refused with the real bound (the 512-token context), not ">= 1".
  b = ok_chat;
  b["max_tokens"] = int64_t{1000000000000};
  r = Post("/v1/chat/completions", b.dump());
  ExpectError(r, 400);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "context_length_exceeded");
  EXPECT_NE(json::parse(r->body)["error"]["message"].get<std::string>().find("512"),
            std::string::npos)
      << r->body;
  // Another method on a POST endpoint: 405 with Allow, OpenAI-style body.
  for (const char* path : {"/v1/chat/completions", "/v1/completions"}) {
    auto c = Client();
    r = c.Get(path);
    ExpectError(r, 405);
    EXPECT_EQ(r->get_header_value("Allow"), "POST");
  }
}

TEST_F(RouterHttpTest, ModelsHealthReadyMetrics) {
  auto c = Client();
  auto r = c.Get("/v1/models");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  const json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["id"], "tiny-f32");
  r = c.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = c.Get("/ready");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  // One request so the token counters move.
  Post("/v1/completions", json{{"prompt", "The"}, {"max_tokens", 2}}.dump());
  r = c.Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  for (const char* name :
       {"pipeinfer_router_http_requests_total", "pipeinfer_prompt_tokens_total",
        "pipeinfer_generation_tokens_total", "pipeinfer_time_to_first_token_seconds_bucket",
        "pipeinfer_inter_token_latency_seconds_bucket", "pipeinfer_e2e_request_latency_seconds",
        "pipeinfer_request_queue_time_seconds", "pipeinfer_request_success_total",
        "pipeinfer_num_requests_running", "pipeinfer_num_requests_waiting", "pipeinfer_build_info",
        "process_cpu_seconds_total", "process_resident_memory_bytes"}) {
    EXPECT_NE(r->body.find(name), std::string::npos) << name;
  }
}

TEST_F(RouterHttpTest, DisconnectMidStreamFreesKv) {
  const json body{
      {"prompt", PromptText()}, {"max_tokens", 400}, {"temperature", 0}, {"stream", true}};
  const int fd = StartStream(cluster->http_port, body, 4);
  ASSERT_GE(fd, 0);
  EXPECT_GT(StageInfo(cluster->addr0).kv_blocks_in_use(), 0u);
  close(fd);

  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  v1::StageInfo i0, i1;
  while (std::chrono::steady_clock::now() < end) {
    i0 = StageInfo(cluster->addr0);
    i1 = StageInfo(cluster->addr1);
    if (i0.kv_blocks_in_use() == 0 && i1.kv_blocks_in_use() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(i0.kv_blocks_in_use(), 0u);
  EXPECT_EQ(i1.kv_blocks_in_use(), 0u);
  EXPECT_EQ(i0.sessions_open(), 0u);
  EXPECT_EQ(i1.sessions_open(), 0u);
}

// A second router with one slot and no queue: a request beyond it gets 429 with Retry-After.
TEST_F(RouterHttpTest, AdmissionLimitGives429) {
  const int http_port = FreePort();
  const std::string grpc_addr = "127.0.0.1:" + std::to_string(FreePort());
  const std::string log =
      ::testing::TempDir() + "/router_http_test." + std::to_string(getpid()) + ".router2.log";
  ChildProcess router(
      {BinPath("pipeinfer-router"), "--http", "127.0.0.1:" + std::to_string(http_port), "--grpc",
       grpc_addr, "--draft", cluster->draft, "--model", FixturePath("models/tiny-f32.gguf"),
       "--model-id", "tiny", "--max-inflight", "1", "--max-queue", "0"},
      log);
  ASSERT_TRUE(WaitServing(grpc_addr, log, router, std::chrono::seconds(30))) << ReadText(log);
  const int fd = StartStream(
      http_port,
      json{{"prompt", PromptText()}, {"max_tokens", 440}, {"temperature", 0}, {"stream", true}}, 2);
  ASSERT_GE(fd, 0) << ReadText(log);
  httplib::Client c("127.0.0.1", http_port);
  auto r = c.Post("/v1/completions", json{{"prompt", "a"}, {"max_tokens", 2}}.dump(),
                  "application/json");
  ExpectError(r, 429);
  EXPECT_FALSE(r->get_header_value("Retry-After").empty());
  close(fd);
  // The slot comes back once the disconnected stream has been cancelled.
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  int status = 0;
  while (std::chrono::steady_clock::now() < end) {
    r = c.Post("/v1/completions",
               json{{"model", "tiny"}, {"prompt", "a"}, {"max_tokens", 2}}.dump(),
               "application/json");
    if (r && (status = r->status) == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(status, 200);
  EXPECT_EQ(router.Stop(), 0) << ReadText(log);
  std::remove(log.c_str());
}

// A streamed request that fails before producing any text (here: no draft service behind the
// router) gets a real HTTP error status and an OpenAI error body, not a 200 with an error event.
TEST_F(RouterHttpTest, StreamFailingBeforeFirstTokenGetsHttpError) {
  const int http_port = FreePort();
  const std::string grpc_addr = "127.0.0.1:" + std::to_string(FreePort());
  const std::string nowhere = "127.0.0.1:" + std::to_string(FreePort());
  const std::string log =
      ::testing::TempDir() + "/router_http_test." + std::to_string(getpid()) + ".router3.log";
  ChildProcess router(
      {BinPath("pipeinfer-router"), "--http", "127.0.0.1:" + std::to_string(http_port), "--grpc",
       grpc_addr, "--draft", nowhere, "--model", FixturePath("models/tiny-f32.gguf"), "--model-id",
       "tiny"},
      log);
  httplib::Client c("127.0.0.1", http_port);
  c.set_read_timeout(30, 0);
  bool up = false;
  for (int i = 0; i < 200 && !up; ++i) {
    up = static_cast<bool>(c.Get("/health"));
    if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(up) << ReadText(log);
  for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
    SCOPED_TRACE(path);
    const json body = std::string(path) == "/v1/completions"
                          ? json{{"prompt", "a"}, {"max_tokens", 3}, {"stream", true}}
                          : json{{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                                 {"max_tokens", 3},
                                 {"stream", true}};
    auto r = c.Post(path, body.dump(), "application/json");
    ExpectError(r, 503);
    EXPECT_EQ(r->get_header_value("Retry-After"), "1");  // retryable: RouterOptions default
  }
  EXPECT_EQ(router.Stop(), 0) << ReadText(log);
  std::remove(log.c_str());
}

// The gRPC Router service: same semantics as HTTP.
TEST_F(RouterHttpTest, GrpcRouterService) {
  auto stub =
      v1::Router::NewStub(grpc::CreateChannel(cluster->grpc, grpc::InsecureChannelCredentials()));
  const auto prompt_ids = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  const auto want = ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"));
  {
    v1::CompletionRequest req;
    for (int32_t id : prompt_ids) req.mutable_token_ids()->add_ids(id);
    req.mutable_options()->set_max_tokens(32);
    req.mutable_options()->mutable_sampling()->set_temperature(0);
    req.set_request_id("grpc-greedy");
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + std::chrono::seconds(60));
    auto reader = stub->Complete(&ctx, req);
    std::vector<int32_t> ids;
    v1::GenerateEvent ev, last;
    while (reader->Read(&ev)) {
      if (ev.has_delta()) {
        EXPECT_EQ(ev.delta().index(), ids.size());
        for (uint32_t t : ev.delta().token_ids()) ids.push_back(static_cast<int32_t>(t));
      }
      last = ev;
    }
    const grpc::Status st = reader->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(ids, want);
    ASSERT_TRUE(last.has_finished());
    EXPECT_EQ(last.finished().finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(last.finished().usage().completion_tokens(), 32u);
    EXPECT_EQ(last.finished().usage().prompt_tokens(), prompt_ids.size());
    EXPECT_EQ(last.finished().request_id(), "grpc-greedy");
    EXPECT_EQ(last.finished().model(), "tiny-f32");
    auto md = ctx.GetServerInitialMetadata();
    auto it = md.find("x-request-id");
    ASSERT_NE(it, md.end());
    EXPECT_EQ(std::string(it->second.data(), it->second.size()), "grpc-greedy");
  }
  auto chat_status = [&](const v1::ChatRequest& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + std::chrono::seconds(30));
    auto reader = stub->Chat(&ctx, req);
    v1::GenerateEvent ev;
    int n = 0;
    while (reader->Read(&ev)) ++n;
    return std::make_pair(reader->Finish(), n);
  };
  v1::ChatRequest chat;
  auto* m = chat.add_messages();
  m->set_role("user");
  m->set_content("hi");
  chat.mutable_options()->set_max_tokens(4);
  auto [st, n] = chat_status(chat);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_GE(n, 1);
  v1::ChatRequest bad = chat;
  bad.mutable_messages(0)->set_role("wizard");
  EXPECT_EQ(chat_status(bad).first.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad = chat;
  bad.set_model("nope");
  EXPECT_EQ(chat_status(bad).first.error_code(), grpc::StatusCode::NOT_FOUND);
  bad = chat;
  bad.mutable_options()->mutable_sampling()->set_top_p(1.5f);
  EXPECT_EQ(chat_status(bad).first.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad = chat;
  bad.mutable_messages(0)->set_content(std::string(3000, 'x'));
  EXPECT_EQ(chat_status(bad).first.error_code(), grpc::StatusCode::OUT_OF_RANGE);
  // A max_tokens beyond the context (512) is refused as over HTTP, not clamped.
  bad = chat;
  bad.mutable_options()->set_max_tokens(100000);
  EXPECT_EQ(chat_status(bad).first.error_code(), grpc::StatusCode::OUT_OF_RANGE);

  grpc::ClientContext lctx;
  v1::ListModelsResponse models;
  ASSERT_TRUE(stub->ListModels(&lctx, v1::ListModelsRequest(), &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).id(), "tiny-f32");
  EXPECT_GT(models.models(0).n_ctx(), 0u);

  grpc::ClientContext sctx;
  v1::ClusterStatsRequest sreq;
  sreq.set_include_stages(true);
  v1::ClusterStatsResponse stats;
  ASSERT_TRUE(stub->GetClusterStats(&sctx, sreq, &stats).ok());
  ASSERT_EQ(stats.services_size(), 4);
  EXPECT_EQ(stats.services(0).service(), "router");
  EXPECT_GT(stats.services(0).counters_size(), 0);
}

}  // namespace
}  // namespace pipeinfer
