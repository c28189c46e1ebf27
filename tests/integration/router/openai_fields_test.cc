// Every OpenAI request field is handled or refused (issue 15, part 4), on real processes: two
// pipeinfer-stage (tiny-f32 split in two), pipeinfer-draft with tiny-q4_0 as its draft model, and
// pipeinfer-router.
//  * refusals: unknown fields, known fields this server does not implement, values out of range
//    -> 400 with an OpenAI error body whose `param` names the field;
//  * user / metadata / store=false accepted, `user` in the router's access log;
//  * stream_options.include_usage: a last chunk with empty choices and the usage before [DONE];
//  * system_fingerprint in every object and chunk;
//  * logit_bias, frequency_penalty: the greedy tokens predicted from the fixture's reference
//    logits (llama.cpp's, refs/tiny-f32.p1.*) with the bias / penalty applied by the test itself,
//    up to and including the first token where they change the output;
//  * greedy tokens identical in plain, sync and pipeinfer with penalties and with logit_bias;
//  * logprobs: the reported log-probabilities agree with a log-softmax of the reference logits.
#include <httplib.h>

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "gguf/reader.h"
#include "pipeinfer/v1/router.grpc.pb.h"
#include "testing/fixtures.h"
#include "testing/process.h"
#include "testing/service_group.h"
#include "tokenizer/tokenizer.h"

namespace pipeinfer {
namespace {

using json = nlohmann::json;
using testing::BinPath;
using testing::FixturePath;
using testing::ReadF32;
using testing::ReadIds;

constexpr int kVocab = 259;  // tiny-f32 (refs/tiny-f32.p1.meta.txt)

struct Cluster {
  std::string grpc;
  int http_port = 0;
  std::unique_ptr<testing::ServiceGroup> services;
};
std::unique_ptr<Cluster> cluster;

class OpenAiFieldsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string model = FixturePath("models/tiny-f32.gguf");
    auto c = std::make_unique<Cluster>();
    c->services = testing::StartServiceGroup("openai_fields_test", [&](testing::ServiceGroup& g) {
      const std::string s0 = testing::FreeLoopbackAddress(), s1 = testing::FreeLoopbackAddress(),
                        draft = testing::FreeLoopbackAddress();
      auto stage = [&](const std::string& listen, const std::string& index) {
        return testing::StageArgv(model, listen, index, 2, {"--kv-tokens", "2048"});
      };
      std::vector<std::string> stage0 = stage(s0, "0");
      stage0.insert(stage0.end(), {"--downstream", s1, "--connect-timeout-ms", "500"});
      c->grpc = testing::FreeLoopbackAddress();
      c->http_port = testing::FreePort();
      return g.Start("stage1", stage(s1, "1"), s1) && g.Start("stage0", stage0, s0) &&
             g.Start("draft",
                     {BinPath("pipeinfer-draft"), "--listen", draft, "--stage0", s0, "--last", s1,
                      "--model", model, "--draft-model", FixturePath("models/tiny-q4_0.gguf")},
                     draft) &&
             g.Start("router",
                     {BinPath("pipeinfer-router"), "--http",
                      "127.0.0.1:" + std::to_string(c->http_port), "--grpc", c->grpc, "--draft",
                      draft, "--model", model},
                     c->grpc);
    });
    if (!c->services) return;
    // The HTTP listener may come up just after the gRPC one the group waited for.
    httplib::Client h("127.0.0.1", c->http_port);
    for (int i = 0; i < 100; ++i) {
      auto r = h.Get("/health");
      if (r && r->status == 200) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    cluster = std::move(c);
  }
  static void TearDownTestSuite() {
    if (!cluster) return;
    cluster->services->Finish();
    cluster.reset();
  }
  void SetUp() override { ASSERT_NE(cluster, nullptr) << "the processes did not start"; }

  static httplib::Result Post(const std::string& path, const json& body) {
    httplib::Client c("127.0.0.1", cluster->http_port);
    c.set_read_timeout(60, 0);
    return c.Post(path.c_str(), body.dump(), "application/json");
  }
  // 400 with an OpenAI error whose param is `param` and whose message contains `words`.
  static void ExpectRefused(const std::string& path, const json& body, const std::string& param,
                            const std::string& words) {
    SCOPED_TRACE(body.dump());
    auto r = Post(path, body);
    ASSERT_TRUE(r) << "no response";
    EXPECT_EQ(r->status, 400) << r->body;
    const json j = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r->body;
    EXPECT_EQ(j["error"]["param"], param) << r->body;
    EXPECT_EQ(j["error"]["type"], "invalid_request_error") << r->body;
    EXPECT_NE(j["error"]["message"].get<std::string>().find(words), std::string::npos) << r->body;
  }
  static json Chat() {
    return json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 3}};
  }
  static json Completion() { return json{{"prompt", "Once upon"}, {"max_tokens", 3}}; }
};

// The data events of an SSE body, [DONE] excluded; *done tells whether it ended with [DONE].
std::vector<json> Events(const std::string& body, bool* done) {
  std::vector<json> out;
  std::istringstream in(body);
  *done = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("data: ", 0) != 0) continue;
    if (line == "data: [DONE]") {
      *done = true;
      continue;
    }
    out.push_back(json::parse(line.substr(6)));
  }
  return out;
}

TEST_F(OpenAiFieldsTest, UnknownAndUnsupportedFieldsAreRefused) {
  const std::string chat = "/v1/chat/completions", cmpl = "/v1/completions";
  auto with = [](json b, const std::string& k, const json& v) {
    b[k] = v;
    return b;
  };
  ExpectRefused(chat, with(Chat(), "frobnicate", 1), "frobnicate", "unknown field 'frobnicate'");
  ExpectRefused(cmpl, with(Completion(), "temprature", 0.5), "temprature", "unknown field");
  ExpectRefused(cmpl, with(Completion(), "messages", json::array()), "messages", "not supported");
  const json tool = {{"type", "function"}, {"function", {{"name", "f"}}}};
  ExpectRefused(chat, with(Chat(), "tools", json::array({tool})), "tools", "not supported");
  ExpectRefused(chat, with(Chat(), "tool_choice", "auto"), "tool_choice", "not supported");
  ExpectRefused(chat, with(Chat(), "functions", json::array({{{"name", "f"}}})), "functions",
                "not supported");
  ExpectRefused(chat, with(Chat(), "function_call", "auto"), "function_call", "not supported");
  ExpectRefused(chat, with(Chat(), "response_format", {{"type", "json_object"}}), "response_format",
                "json_object");
  ExpectRefused(chat,
                with(Chat(), "response_format", {{"type", "json_schema"}, {"json_schema", {}}}),
                "response_format", "not supported");
  ExpectRefused(chat, with(Chat(), "n", 2), "n", "not supported");
  ExpectRefused(chat, with(Chat(), "audio", {{"voice", "x"}}), "audio", "not supported");
  ExpectRefused(chat, with(Chat(), "modalities", {"text", "audio"}), "modalities", "not supported");
  ExpectRefused(chat, with(Chat(), "prediction", {{"type", "content"}}), "prediction",
                "not supported");
  ExpectRefused(chat, with(Chat(), "store", true), "store", "not supported");
  ExpectRefused(cmpl, with(Completion(), "echo", true), "echo", "not supported");
  ExpectRefused(cmpl, with(Completion(), "suffix", "end"), "suffix", "not supported");
  ExpectRefused(cmpl, with(Completion(), "best_of", 3), "best_of", "not supported");
  ExpectRefused(chat, with(Chat(), "stream_options", {{"include_usage", true}}), "stream_options",
                "stream");
  json b = with(with(Chat(), "stream", true), "stream_options", {{"include_usage", "yes"}});
  ExpectRefused(chat, b, "stream_options", "boolean");
  ExpectRefused(chat, with(Chat(), "top_logprobs", 3), "top_logprobs", "logprobs");
  ExpectRefused(chat, with(with(Chat(), "logprobs", true), "top_logprobs", 21), "top_logprobs",
                "[0, 20]");
  ExpectRefused(cmpl, with(Completion(), "logprobs", 6), "logprobs", "[0, 5]");
  ExpectRefused(chat, with(Chat(), "logprobs", 2), "logprobs", "boolean");
  ExpectRefused(chat, with(Chat(), "logit_bias", {{"abc", 1}}), "logit_bias", "token id");
  ExpectRefused(chat, with(Chat(), "logit_bias", {{"259", 1}}), "logit_bias", "token id");
  ExpectRefused(chat, with(Chat(), "logit_bias", {{"5", 101}}), "logit_bias", "[-100, 100]");
  ExpectRefused(chat, with(Chat(), "frequency_penalty", 2.5), "frequency_penalty", "[-2, 2]");
  ExpectRefused(chat, with(Chat(), "presence_penalty", -3), "presence_penalty", "[-2, 2]");
  ExpectRefused(chat, with(Chat(), "min_p", 1.5), "min_p", "min_p");
  ExpectRefused(chat, with(Chat(), "mode", "fast"), "mode", "plain");
  b = Chat();
  b["messages"][0]["name"] = "bob";
  ExpectRefused(chat, b, "messages", "messages[0].name");
  b = Chat();
  b["messages"][0]["colour"] = "red";
  ExpectRefused(chat, b, "messages", "unknown field 'messages[0].colour'");
  b = Chat();
  b["messages"][0]["content"] = json::array({{{"type", "image_url"}, {"image_url", "x"}}});
  ExpectRefused(chat, b, "messages", "text");

  // Accepted no-ops and their "off" forms.
  for (const auto& [k, v] :
       std::vector<std::pair<std::string, json>>{{"store", false},
                                                 {"metadata", {{"team", "a"}}},
                                                 {"response_format", {{"type", "text"}}},
                                                 {"tool_choice", "none"},
                                                 {"tools", nullptr},
                                                 {"service_tier", "auto"},
                                                 {"parallel_tool_calls", true},
                                                 {"mode", "plain"},
                                                 {"min_p", 0.05},
                                                 {"top_k", 5},
                                                 {"repetition_penalty", 1.1},
                                                 {"seed", 7}}) {
    auto r = Post(chat, with(Chat(), k, v));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << k << ": " << r->body;
  }
  auto r = Post(cmpl, with(with(with(Completion(), "echo", false), "best_of", 1), "suffix", ""));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
}

TEST_F(OpenAiFieldsTest, UserGoesToTheAccessLogAndFingerprintIsEverywhere) {
  json b = Chat();
  b["user"] = "alice-7f3a";
  auto r = Post("/v1/chat/completions", b);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json whole = json::parse(r->body);
  const std::string fp = whole.value("system_fingerprint", "");
  EXPECT_EQ(fp.rfind("fp_", 0), 0u) << r->body;
  EXPECT_GT(fp.size(), 3u);
  EXPECT_NE(cluster->services->Log("router").find("alice-7f3a"), std::string::npos)
      << cluster->services->Log("router");

  for (const char* path : {"/v1/chat/completions", "/v1/completions"}) {
    json s = std::string(path) == "/v1/completions" ? Completion() : Chat();
    s["stream"] = true;
    r = Post(path, s);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    bool done = false;
    const std::vector<json> events = Events(r->body, &done);
    ASSERT_TRUE(done);
    ASSERT_GE(events.size(), 2u);
    for (const json& e : events) EXPECT_EQ(e["system_fingerprint"], fp) << e.dump();
    r = Post(path, std::string(path) == "/v1/completions" ? Completion() : Chat());
    ASSERT_TRUE(r);
    EXPECT_EQ(json::parse(r->body)["system_fingerprint"], fp);
  }
}

TEST_F(OpenAiFieldsTest, StreamOptionsIncludeUsage) {
  for (const char* path : {"/v1/chat/completions", "/v1/completions"}) {
    SCOPED_TRACE(path);
    json b = std::string(path) == "/v1/completions" ? Completion() : Chat();
    b["stream"] = true;
    b["stream_options"] = {{"include_usage", true}};
    auto r = Post(path, b);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    bool done = false;
    std::vector<json> events = Events(r->body, &done);
    ASSERT_TRUE(done);
    ASSERT_GE(events.size(), 2u);
    const json& last = events.back();
    EXPECT_TRUE(last["choices"].is_array() && last["choices"].empty()) << last.dump();
    EXPECT_EQ(last["usage"]["completion_tokens"], 3) << last.dump();
    EXPECT_EQ(last["usage"]["total_tokens"].get<int>(),
              last["usage"]["prompt_tokens"].get<int>() + 3);
    // Every other chunk has "usage": null and exactly one choice; the one before is the finish.
    for (size_t i = 0; i + 1 < events.size(); ++i) {
      EXPECT_TRUE(events[i].contains("usage") && events[i]["usage"].is_null()) << events[i].dump();
      EXPECT_EQ(events[i]["choices"].size(), 1u);
    }
    EXPECT_EQ(events[events.size() - 2]["choices"][0]["finish_reason"], "length");
    // Without include_usage: no chunk without choices.
    b.erase("stream_options");
    r = Post(path, b);
    ASSERT_TRUE(r);
    events = Events(r->body, &done);
    for (const json& e : events) EXPECT_EQ(e["choices"].size(), 1u) << e.dump();
  }
}

// The reference logits at generated position i of prompt 1 (valid while the output follows the
// reference greedy ids): the last prompt row, then greedy row i - 1.
class Reference {
 public:
  Reference()
      : prompt_(ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"))),
        greedy_(ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"))),
        prompt_logits_(ReadF32(FixturePath("refs/tiny-f32.p1.prompt_logits.f32"))),
        greedy_logits_(ReadF32(FixturePath("refs/tiny-f32.p1.greedy_logits.f32"))) {}
  const std::vector<int32_t>& prompt() const { return prompt_; }
  const std::vector<int32_t>& greedy() const { return greedy_; }
  std::vector<float> Row(size_t i) const {
    const std::vector<float>& src = i == 0 ? prompt_logits_ : greedy_logits_;
    const size_t row = i == 0 ? prompt_.size() - 1 : i - 1;
    return std::vector<float>(src.begin() + row * kVocab, src.begin() + (row + 1) * kVocab);
  }

  // The greedy tokens under `adjust` (applied to each row with the tokens so far), as far as the
  // reference rows are valid: the reference tokens up to and including the first one that
  // `adjust` changes. *margin = the smallest top-2 gap of the adjusted rows used.
  template <typename Adjust>
  std::vector<int32_t> Predict(Adjust adjust, size_t max_len, float* margin) const {
    std::vector<int32_t> out, seq = prompt_;
    *margin = 1e9f;
    for (size_t i = 0; i < max_len && i < greedy_.size(); ++i) {
      std::vector<float> row = Row(i);
      adjust(row, seq);
      std::vector<int32_t> order(kVocab);
      for (int v = 0; v < kVocab; ++v) order[v] = v;
      std::sort(order.begin(), order.end(),
                [&](int a, int b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
      *margin = std::min(*margin, row[order[0]] - row[order[1]]);
      out.push_back(order[0]);
      seq.push_back(order[0]);
      if (order[0] != greedy_[i]) break;
    }
    return out;
  }

 private:
  std::vector<int32_t> prompt_, greedy_;
  std::vector<float> prompt_logits_, greedy_logits_;
};

// Greedy ids over the gRPC Router service (exact token ids).
std::vector<int32_t> GrpcGreedy(const Reference& ref, int n, const v1::SamplingParams& sampling,
                                v1::SpecMode mode, bool paper_tree = false,
                                uint64_t* drafted = nullptr) {
  auto stub =
      v1::Router::NewStub(grpc::CreateChannel(cluster->grpc, grpc::InsecureChannelCredentials()));
  v1::CompletionRequest req;
  for (int32_t id : ref.prompt()) req.mutable_token_ids()->add_ids(id);
  auto* o = req.mutable_options();
  o->set_max_tokens(n);
  o->set_ignore_eos(true);
  *o->mutable_sampling() = sampling;
  o->mutable_sampling()->set_temperature(0);
  o->mutable_spec()->set_mode(mode);
  if (mode != v1::SPEC_MODE_PLAIN) {
    // A draft as costly as its target: a fixed budget so that every mode really speculates.
    o->mutable_spec()->set_draft_max(4);
    o->mutable_spec()->set_p_accept(0.1f);
    if (paper_tree) o->mutable_spec()->set_paper_tree(true);
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = stub->Complete(&ctx, req);
  std::vector<int32_t> ids;
  v1::GenerateEvent ev;
  while (reader->Read(&ev)) {
    if (ev.has_delta()) {
      for (uint32_t t : ev.delta().token_ids()) ids.push_back(static_cast<int32_t>(t));
    }
    if (ev.has_finished() && drafted) *drafted += ev.finished().spec().tokens_drafted();
  }
  const grpc::Status st = reader->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
  return ids;
}

// The HTTP completion text of prompt 1 (as token ids), greedy, with `extra` fields.
std::string HttpGreedyText(const Reference& ref, int n, const json& extra) {
  json b{{"prompt", ref.prompt()}, {"max_tokens", n}, {"temperature", 0}, {"ignore_eos", true}};
  for (auto it = extra.begin(); it != extra.end(); ++it) b[it.key()] = it.value();
  httplib::Client c("127.0.0.1", cluster->http_port);
  c.set_read_timeout(60, 0);
  auto r = c.Post("/v1/completions", b.dump(), "application/json");
  EXPECT_TRUE(r);
  if (!r) return "";
  EXPECT_EQ(r->status, 200) << r->body;
  return json::parse(r->body)["choices"][0]["text"].get<std::string>();
}

std::string TextOf(const std::vector<int32_t>& ids) {
  auto file = gguf::GgufFile::Open(FixturePath("models/tiny-f32.gguf"));
  auto tok = tokenizer::Tokenizer::FromGguf(**file);
  tokenizer::IncrementalDetokenizer detok(**tok);
  std::string s;
  for (int32_t id : ids) s += detok.Push(id);
  return s + detok.Flush();
}

TEST_F(OpenAiFieldsTest, LogitBiasBansAndForcesTokens) {
  const Reference ref;
  const int32_t first = ref.greedy()[0];
  // -100 on the first greedy token: the output follows the second-best token of the reference
  // row (computed here from llama.cpp's logits).
  float margin = 0;
  const std::vector<int32_t> want = ref.Predict(
      [&](std::vector<float>& row, const std::vector<int32_t>&) { row[first] -= 100.0f; }, 1,
      &margin);
  ASSERT_EQ(want.size(), 1u);
  ASSERT_NE(want[0], first);
  ASSERT_GT(margin, 0.05f) << "the reference's runner-up is too close to call";
  v1::SamplingParams ban;
  (*ban.mutable_logit_bias())[first] = -100.0f;
  const std::vector<int32_t> got = GrpcGreedy(ref, 6, ban, v1::SPEC_MODE_PLAIN);
  ASSERT_EQ(got.size(), 6u);
  EXPECT_EQ(got[0], want[0]);
  EXPECT_EQ(std::find(got.begin(), got.end(), first), got.end()) << "banned token emitted";
  // The same through HTTP (the bias arrives as {"<id>": -100}).
  EXPECT_EQ(HttpGreedyText(ref, 6, {{"logit_bias", {{std::to_string(first), -100}}}}), TextOf(got));

  // +100 on a token the model does not want: it is produced at every step.
  const int32_t forced = 120;  // 'u' in the byte vocabulary
  ASSERT_NE(forced, first);
  v1::SamplingParams force;
  (*force.mutable_logit_bias())[forced] = 100.0f;
  EXPECT_EQ(GrpcGreedy(ref, 5, force, v1::SPEC_MODE_PLAIN), std::vector<int32_t>(5, forced));
  EXPECT_EQ(HttpGreedyText(ref, 5, {{"logit_bias", {{std::to_string(forced), 100}}}}),
            TextOf(std::vector<int32_t>(5, forced)));
}

TEST_F(OpenAiFieldsTest, FrequencyPenaltyChangesGreedyRepetition) {
  const Reference ref;
  // The window is the draft service's default repeat_last_n = 64 tokens, prompt included.
  const float fp = 1.5f;
  auto penalise = [&](std::vector<float>& row, const std::vector<int32_t>& seq) {
    std::map<int32_t, int> count;
    for (size_t i = seq.size() > 64 ? seq.size() - 64 : 0; i < seq.size(); ++i) ++count[seq[i]];
    for (const auto& [t, c] : count) row[t] -= fp * static_cast<float>(c);
  };
  float margin = 0;
  const std::vector<int32_t> want = ref.Predict(penalise, 32, &margin);
  ASSERT_NE(want, std::vector<int32_t>(ref.greedy().begin(), ref.greedy().begin() + want.size()))
      << "the penalty changes nothing in the reference";
  ASSERT_GT(margin, 0.05f) << "a reference decision is too close to call";
  v1::SamplingParams pen;
  pen.set_frequency_penalty(fp);
  const std::vector<int32_t> got = GrpcGreedy(ref, 24, pen, v1::SPEC_MODE_PLAIN);
  ASSERT_GE(got.size(), want.size());
  EXPECT_EQ(std::vector<int32_t>(got.begin(), got.begin() + want.size()), want);
  EXPECT_EQ(HttpGreedyText(ref, 24, {{"frequency_penalty", fp}}), TextOf(got));
}

TEST_F(OpenAiFieldsTest, GreedyIdenticalAcrossModesWithPenaltiesAndBias) {
  const Reference ref;
  std::vector<std::pair<std::string, v1::SamplingParams>> cases(4);
  cases[0].first = "frequency+presence";
  cases[0].second.set_frequency_penalty(0.7f);
  cases[0].second.set_presence_penalty(0.4f);
  cases[1].first = "repetition";
  cases[1].second.set_repetition_penalty(1.3f);
  cases[2].first = "logit_bias";
  (*cases[2].second.mutable_logit_bias())[ref.greedy()[1]] = -100.0f;
  (*cases[2].second.mutable_logit_bias())[104] = 3.0f;
  cases[3].first = "all";
  cases[3].second = cases[0].second;
  cases[3].second.set_repetition_penalty(1.1f);
  (*cases[3].second.mutable_logit_bias())[ref.greedy()[3]] = -5.0f;
  for (const auto& [name, sp] : cases) {
    SCOPED_TRACE(name);
    const std::vector<int32_t> plain = GrpcGreedy(ref, 24, sp, v1::SPEC_MODE_PLAIN);
    ASSERT_EQ(plain.size(), 24u);
    EXPECT_NE(plain, std::vector<int32_t>(ref.greedy().begin(), ref.greedy().begin() + 24));
    uint64_t drafted = 0;
    EXPECT_EQ(GrpcGreedy(ref, 24, sp, v1::SPEC_MODE_SYNC, false, &drafted), plain);
    EXPECT_EQ(GrpcGreedy(ref, 24, sp, v1::SPEC_MODE_PIPEINFER, false, &drafted), plain);
    EXPECT_EQ(GrpcGreedy(ref, 24, sp, v1::SPEC_MODE_PIPEINFER, /*paper_tree=*/true, &drafted),
              plain);
    EXPECT_GT(drafted, 0u) << "the speculative modes drafted nothing";
  }
  // HTTP "mode" selects the same modes.
  v1::SamplingParams fp;
  fp.set_frequency_penalty(0.7f);
  const std::string want = TextOf(GrpcGreedy(ref, 24, fp, v1::SPEC_MODE_PLAIN));
  for (const char* mode : {"plain", "sync", "pipeinfer"}) {
    EXPECT_EQ(HttpGreedyText(ref, 24, {{"mode", mode}, {"frequency_penalty", 0.7}}), want) << mode;
  }
}

TEST_F(OpenAiFieldsTest, LogprobsAgreeWithReferenceLogits) {
  const Reference ref;
  // log-softmax of the reference rows, in double.
  auto log_softmax = [](const std::vector<float>& row) {
    double m = *std::max_element(row.begin(), row.end()), z = 0;
    for (float l : row) z += std::exp(l - m);
    std::vector<double> out;
    for (float l : row) out.push_back(l - m - std::log(z));
    return out;
  };
  constexpr int kTokens = 6;
  constexpr double kTol = 0.02;  // llama.cpp's f16 KV cache vs ours
  for (const char* mode : {"plain", "pipeinfer"}) {
    for (bool stream : {false, true}) {
      SCOPED_TRACE(std::string(mode) + (stream ? " streamed" : ""));
      json b{{"prompt", ref.prompt()}, {"max_tokens", kTokens}, {"temperature", 0},
             {"logprobs", 3},          {"mode", mode},          {"stream", stream}};
      auto r = Post("/v1/completions", b);
      ASSERT_TRUE(r);
      ASSERT_EQ(r->status, 200) << r->body;
      json lp{{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
      std::string text;
      if (stream) {
        bool done = false;
        for (const json& e : Events(r->body, &done)) {
          const json& ch = e["choices"][0];
          text += ch["text"].get<std::string>();
          if (ch["logprobs"].is_null()) continue;
          for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) {
            for (const json& x : ch["logprobs"][k]) lp[k].push_back(x);
          }
        }
        EXPECT_TRUE(done);
      } else {
        const json j = json::parse(r->body);
        text = j["choices"][0]["text"];
        lp = j["choices"][0]["logprobs"];
      }
      ASSERT_EQ(lp["token_logprobs"].size(), static_cast<size_t>(kTokens)) << r->body;
      EXPECT_LE(lp["text_offset"].back().get<size_t>(), text.size());
      ASSERT_EQ(lp["top_logprobs"].size(), static_cast<size_t>(kTokens));
      // text_offset: the bytes of text the tokens before produced (incremental detokenizing).
      auto file = gguf::GgufFile::Open(FixturePath("models/tiny-f32.gguf"));
      ASSERT_TRUE(file.ok());
      auto tok = tokenizer::Tokenizer::FromGguf(**file);
      ASSERT_TRUE(tok.ok());
      tokenizer::IncrementalDetokenizer detok(**tok);
      size_t offset = 0;
      for (int i = 0; i < kTokens; ++i) {
        const std::vector<double> want = log_softmax(ref.Row(static_cast<size_t>(i)));
        EXPECT_NEAR(lp["token_logprobs"][i].get<double>(), want[ref.greedy()[i]], kTol) << i;
        // The three best of the reference row, by value.
        std::vector<double> best = want;
        std::sort(best.rbegin(), best.rend());
        std::vector<double> got;
        for (auto it = lp["top_logprobs"][i].begin(); it != lp["top_logprobs"][i].end(); ++it) {
          got.push_back(it.value().get<double>());
        }
        std::sort(got.rbegin(), got.rend());
        ASSERT_GE(got.size(), 1u) << lp.dump();
        EXPECT_NEAR(got[0], best[0], kTol) << i;
        EXPECT_EQ(lp["text_offset"][i].get<size_t>(), offset) << i;
        offset += detok.Push(ref.greedy()[i]).size();
        // Distinct alternatives keep distinct strings (byte tokens as "bytes:\\xNN").
        EXPECT_EQ(got.size(), 3u) << lp["top_logprobs"][i].dump();
        for (size_t k = 1; k < got.size() && k < 3; ++k) EXPECT_NEAR(got[k], best[k], kTol) << i;
      }
    }
  }
  // Without logprobs: null.
  auto r = Post("/v1/completions", json{{"prompt", "a"}, {"max_tokens", 2}});
  ASSERT_TRUE(r);
  EXPECT_TRUE(json::parse(r->body)["choices"][0]["logprobs"].is_null());
}

TEST_F(OpenAiFieldsTest, ChatLogprobsShape) {
  json b = Chat();
  b["max_tokens"] = 5;
  b["temperature"] = 0;
  b["logprobs"] = true;
  b["top_logprobs"] = 2;
  auto r = Post("/v1/chat/completions", b);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json whole = json::parse(r->body);
  const json& content = whole["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), whole["usage"]["completion_tokens"].get<size_t>()) << r->body;
  for (const json& c : content) {
    ASSERT_TRUE(c["logprob"].is_number());
    EXPECT_LE(c["logprob"].get<double>(), 0.0);
    ASSERT_TRUE(c["bytes"].is_array());
    ASSERT_EQ(c["top_logprobs"].size(), 2u);
    // Greedy: the chosen token is the most likely one.
    EXPECT_EQ(c["top_logprobs"][0]["bytes"], c["bytes"]);
    EXPECT_NEAR(c["top_logprobs"][0]["logprob"].get<double>(), c["logprob"].get<double>(), 1e-6);
    EXPECT_GE(c["top_logprobs"][0]["logprob"].get<double>(),
              c["top_logprobs"][1]["logprob"].get<double>());
  }
  // Streamed: the same entries, spread over the chunks.
  b["stream"] = true;
  r = Post("/v1/chat/completions", b);
  ASSERT_TRUE(r);
  bool done = false;
  json streamed = json::array();
  for (const json& e : Events(r->body, &done)) {
    const json& lp = e["choices"][0]["logprobs"];
    if (lp.is_object()) {
      for (const json& c : lp["content"]) streamed.push_back(c);
    }
  }
  ASSERT_EQ(streamed.size(), content.size());
  for (size_t i = 0; i < content.size(); ++i) {
    EXPECT_EQ(streamed[i]["bytes"], content[i]["bytes"]);
    EXPECT_NEAR(streamed[i]["logprob"].get<double>(), content[i]["logprob"].get<double>(), 1e-4);
  }
}

}  // namespace
}  // namespace pipeinfer
