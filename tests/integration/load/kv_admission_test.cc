// KV admission on real processes (docs/architecture.md section 5, stage.proto section 9): two
// pipeinfer-stage processes with a small, known KV capacity (the demo target, 2 stages), the
// draft service in pipeinfer mode with explicit knobs and a short --kv-wait-ms, and the router.
//
// The reservation of a request is computed here from the documented formula, linked from the
// libraries and not read back from the processes: kv::ReservationBlocks(spec::KvDemandOf(mode,
// knobs, max_context, stages)), where max_context is prompt + max_tokens, or the whole context
// without max_tokens. With the paper's micro-batches (--paper-tree), 2 stages, draft_max 4 and
// max_inflight 3: P = 4 partitions, T = 9, a full-context request (256) reserves ceil((256 + 5 * 9)
// / 16) + 4 * 4 + 2 = 37 blocks.
//
// RefusesWhatDoesNotFitWith429BeforeTheStream: capacity = 2 full-context requests + L blocks.
// Two long requests (gRPC, ignore_eos, no max_tokens) hold 2 x 37; the stages must report exactly
// that as reserved. While they run, a third full-context request waits --kv-wait-ms and gets HTTP
// 429 with Retry-After and a JSON error, and not a single SSE byte; a small request needing L + 1
// blocks is refused the same way, one needing exactly L is admitted and completes. After the long
// ones finish, a full-context request is admitted again. The long requests are slowed by the
// stages' emulated pass time (--emulate-run-us; the tokens are still computed) so that they
// outlast these steps, and the test checks that they did.
//
// NeverFittingRequestIs400AtOnce: capacity one block short of a full-context request. A
// full-context request can never be served: HTTP 400 context_length_exceeded at once (the draft
// service's --kv-wait-ms is 20 s here), not 429. The largest max_tokens that fits is served, one
// more token (one more block) is refused the same way.
//
// How it can fail: a draft service whose arithmetic differs from the formula by a block admits the
// third request or refuses the exact fit; a stage that reserves differently reports another
// kv_blocks_reserved or refuses the SessionOpen (an error after the stream started); a refusal
// that comes after the 200 head (or as an error event) breaks "before any byte"; a request that can
// never fit but waits shows up as a late 429; the draft's kv_refused_total / kv_waiting must move
// exactly with these refusals.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "integration/load/load_testing.h"
#include "kv/kv_cache.h"
#include "pipeinfer/v1/router.grpc.pb.h"
#include "spec/kv_demand.h"
#include "testing/fixtures.h"
#include "testing/service_group.h"

namespace pipeinfer {
namespace {

using json = nlohmann::json;
using namespace pipeinfer::testing;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kContext = 256;    // the demo target's n_ctx_train
constexpr int32_t kBlockTokens = 16;  // a stage's KV block (EngineOptions::kv_block_tokens)
constexpr uint32_t kStages = 2;
constexpr uint32_t kDraftMax = 4;
constexpr uint32_t kMaxInflight = 3;
// A raw completion prompt of token ids: the router passes it on as is (no BOS), so its length is
// known exactly.
const std::vector<int> kPromptIds = {310, 1204, 77, 2048};

spec::SpecParams Knobs() {
  spec::SpecParams p;
  p.mode = spec::Mode::kPipeInfer;
  p.draft_max = kDraftMax;
  p.paper_tree = true;  // the micro-batch formula of the header (the draft runs --paper-tree)
  p.max_inflight = kMaxInflight;
  return p;
}

// What a request of `max_context` tokens reserves on each stage, by the documented formula.
int64_t BlocksFor(uint32_t max_context) {
  const spec::KvDemand d = spec::KvDemandOf(Knobs(), max_context, kStages);
  return kv::ReservationBlocks(d.reserve_tokens, d.partitions, kBlockTokens);
}

// The largest max_context >= `from` that reserves at most `blocks` (0 when none).
uint32_t LargestContextWithin(int64_t blocks, uint32_t from) {
  uint32_t best = 0;
  for (uint32_t m = from; m <= kContext; ++m) {
    if (BlocksFor(m) <= blocks) best = m;
  }
  return best;
}

struct Cluster {
  std::string stage0, stage1, draft, router_grpc;
  int http_port = 0, draft_metrics_port = 0;
  std::unique_ptr<ServiceGroup> services;
};

std::unique_ptr<Cluster> StartCluster(const std::string& suite, int64_t kv_blocks,
                                      const std::vector<std::string>& stage_flags, int kv_wait_ms) {
  const std::string target = std::string(PIPEINFER_MODELS_DIR) + "/demo-target-q8_0.gguf";
  const std::string draft_model = std::string(PIPEINFER_MODELS_DIR) + "/demo-draft-q8_0.gguf";
  auto c = std::make_unique<Cluster>();
  c->services = StartServiceGroup(suite, [&](ServiceGroup& g) {
    c->stage0 = FreeLoopbackAddress();
    c->stage1 = FreeLoopbackAddress();
    c->draft = FreeLoopbackAddress();
    c->router_grpc = FreeLoopbackAddress();
    c->http_port = FreePort();
    c->draft_metrics_port = FreePort();
    auto stage = [&](const std::string& listen, const std::string& index) {
      std::vector<std::string> flags = {"--kv-tokens", std::to_string(kv_blocks * kBlockTokens)};
      flags.insert(flags.end(), stage_flags.begin(), stage_flags.end());
      return StageArgv(target, listen, index, kStages, flags);
    };
    std::vector<std::string> stage0 = stage(c->stage0, "0");
    stage0.insert(stage0.end(), {"--downstream", c->stage1});
    return g.Start("stage1", stage(c->stage1, "1"), c->stage1) &&
           g.Start("stage0", stage0, c->stage0) &&
           g.Start("draft",
                   {BinPath("pipeinfer-draft"),
                    "--listen",
                    c->draft,
                    "--stage0",
                    c->stage0,
                    "--last",
                    c->stage1,
                    "--model",
                    target,
                    "--draft-model",
                    draft_model,
                    "--mode",
                    "pipeinfer",
                    "--draft-max",
                    std::to_string(kDraftMax),
                    "--paper-tree",
                    "--max-inflight",
                    std::to_string(kMaxInflight),
                    "--kv-wait-ms",
                    std::to_string(kv_wait_ms),
                    "--metrics-listen",
                    "127.0.0.1:" + std::to_string(c->draft_metrics_port)},
                   c->draft) &&
           g.Start(
               "router",
               {BinPath("pipeinfer-router"), "--http", "127.0.0.1:" + std::to_string(c->http_port),
                "--grpc", c->router_grpc, "--draft", c->draft, "--model", target},
               c->router_grpc);
  });
  if (!c->services) return nullptr;
  return c;
}

// The stages have the capacity asked for and the draft service the knobs the formula assumed.
void ExpectConfigured(const Cluster& c, int64_t kv_blocks) {
  for (const std::string& s : {c.stage0, c.stage1}) {
    const v1::StageInfo info = StageInfoOf(s);
    EXPECT_EQ(info.n_ctx(), kContext);
    EXPECT_EQ(info.kv_block_size(), static_cast<uint32_t>(kBlockTokens));
    EXPECT_EQ(info.kv_blocks_total(), static_cast<uint64_t>(kv_blocks));
  }
  const v1::DraftInfo d = DraftInfoOf(c.draft);
  EXPECT_EQ(d.defaults().mode(), v1::SPEC_MODE_PIPEINFER);
  EXPECT_EQ(d.defaults().draft_max(), kDraftMax);
  EXPECT_EQ(d.defaults().max_inflight(), kMaxInflight);
}

// A streamed raw completion of kPromptIds; max_tokens 0 = absent (the whole context).
std::string CompletionBody(int max_tokens) {
  json b{{"prompt", kPromptIds}, {"stream", true}, {"temperature", 0}};
  if (max_tokens > 0) b["max_tokens"] = max_tokens;
  return b.dump();
}

// A refusal that came before any byte of a stream: the given status, a JSON error body with
// `code`, no event-stream content type and no "data:" anywhere in what was received.
void ExpectRefusedBeforeStream(const HttpResult& r, int status, const std::string& code) {
  ASSERT_TRUE(r.complete) << r.failure << ": " << Clip(r.raw);
  EXPECT_EQ(r.status, status) << Clip(r.raw);
  const std::string type = r.headers.count("content-type") ? r.headers.at("content-type") : "";
  EXPECT_NE(type.find("application/json"), std::string::npos) << Clip(r.raw);
  EXPECT_EQ(type.find("text/event-stream"), std::string::npos) << Clip(r.raw);
  EXPECT_EQ(r.raw.find("data:"), std::string::npos) << Clip(r.raw);
  const json j = json::parse(r.body, nullptr, false);
  const json& error = Member(j, "error");
  ASSERT_TRUE(error.is_object()) << Clip(r.raw);
  EXPECT_TRUE(Member(error, "message").is_string()) << r.body;
  EXPECT_EQ(Member(error, "code"), code) << r.body;
  if (status == 429) {
    ASSERT_EQ(r.headers.count("retry-after"), 1u) << Clip(r.raw);
    EXPECT_GE(std::atoi(r.headers.at("retry-after").c_str()), 1) << Clip(r.raw);
  }
}

double DraftMetric(const Cluster& c, const std::string& name) {
  const HttpResult m = HttpRequest(c.draft_metrics_port, "GET", "/metrics");
  EXPECT_TRUE(m.complete && m.status == 200) << m.failure << Clip(m.raw);
  return PrometheusValue(m.body, name);
}

// A long request over the router's gRPC API (HTTP has no ignore_eos): greedy, no max_tokens, so
// it reserves the whole context and runs to its end.
struct LongRequest {
  std::atomic<bool> started{false}, ended{false};
  Clock::time_point ended_at;
  grpc::Status status;
  bool finished = false;
  v1::Finished finish;
  std::string error;
  grpc::ClientContext ctx;
  std::thread thread;

  // A test that stops early (a failed ASSERT) cancels the call instead of waiting for it.
  ~LongRequest() {
    ctx.TryCancel();
    Join();
  }

  void Start(const std::string& router, const std::string& prompt) {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    thread = std::thread([this, router, prompt] {
      auto stub =
          v1::Router::NewStub(grpc::CreateChannel(router, grpc::InsecureChannelCredentials()));
      v1::CompletionRequest req;
      req.set_text(prompt);
      req.mutable_options()->set_ignore_eos(true);
      req.mutable_options()->mutable_sampling()->set_temperature(0);
      auto reader = stub->Complete(&ctx, req);
      v1::GenerateEvent ev;
      while (reader->Read(&ev)) {
        if (ev.has_delta() && ev.delta().token_ids_size() > 0) started = true;
        if (ev.has_finished()) {
          finished = true;
          finish = ev.finished();
        }
        if (ev.has_error()) error = ev.error().message();
      }
      status = reader->Finish();
      ended_at = Clock::now();
      ended = true;
    });
  }
  void Join() {
    if (thread.joinable()) thread.join();
  }
};

TEST(KvAdmissionTest, RefusesWhatDoesNotFitWith429BeforeTheStream) {
  constexpr int kKvWaitMs = 500;
  const int64_t full = BlocksFor(kContext);
  ASSERT_EQ(full, 37);  // the arithmetic of the header comment
  const uint32_t prompt = static_cast<uint32_t>(kPromptIds.size());
  // What is left next to two full-context requests: what a short request (8 new tokens) needs.
  const int64_t left = BlocksFor(prompt + 8);
  const uint32_t fit = LargestContextWithin(left, prompt + 1);  // exactly `left` blocks
  const uint32_t over = fit + 1;                                // one block more
  ASSERT_LT(left, full) << "a third full-context request must not fit";
  ASSERT_EQ(BlocksFor(fit), left);
  ASSERT_EQ(BlocksFor(over), left + 1);
  const int64_t capacity = 2 * full + left;
  std::printf(
      "full-context request %lld blocks; capacity %lld = 2 x %lld + %lld; max_context %u "
      "fits (%lld blocks), %u does not (%lld)\n",
      static_cast<long long>(full), static_cast<long long>(capacity), static_cast<long long>(full),
      static_cast<long long>(left), fit, static_cast<long long>(BlocksFor(fit)), over,
      static_cast<long long>(BlocksFor(over)));

  // 10 ms per pass and stage: a full-context request takes seconds instead of ~0.3 s.
  auto c =
      StartCluster("load_kv_admission_test", capacity, {"--emulate-run-us", "10000"}, kKvWaitMs);
  ASSERT_NE(c, nullptr) << "the processes did not start";
  ExpectConfigured(*c, capacity);

  LongRequest long1, long2;
  long1.Start(c->router_grpc, "It is a truth universally acknowledged, that");
  long2.Start(c->router_grpc, "Emma Woodhouse, handsome, clever, and rich,");
  ASSERT_TRUE(
      PollUntil([&] { return (long1.started && long2.started) || long1.ended || long2.ended; },
                std::chrono::seconds(60)))
      << "the two long requests did not start";
  ASSERT_TRUE(long1.started && long2.started)
      << long1.status.error_message() << " / " << long2.status.error_message();
  // Every stage reserved exactly what the formula says for the two sessions.
  for (const std::string& s : {c->stage0, c->stage1}) {
    const v1::StageInfo info = StageInfoOf(s);
    EXPECT_EQ(info.sessions_open(), 2u) << s;
    EXPECT_EQ(info.kv_blocks_reserved(), static_cast<uint64_t>(2 * full)) << s;
  }
  const double refused_before = DraftMetric(*c, "pipeinfer_draft_kv_refused_total");
  EXPECT_EQ(refused_before, 0);

  // A request that must wait for KV and is then refused; returns the response and the most
  // requests the draft service reported waiting for KV meanwhile.
  auto refused_after_wait = [&](int max_tokens, uint32_t* max_waiting) {
    auto f = std::async(std::launch::async, [&] {
      return HttpRequest(c->http_port, "POST", "/v1/completions", CompletionBody(max_tokens));
    });
    *max_waiting = 0;
    while (f.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready) {
      const Counters d = DraftCounters(c->draft);
      if (d.count("kv_waiting")) {
        *max_waiting = std::max(*max_waiting, static_cast<uint32_t>(d.at("kv_waiting")));
      }
    }
    return f.get();
  };

  {
    SCOPED_TRACE("a third full-context request");
    uint32_t waiting = 0;
    const HttpResult r = refused_after_wait(0, &waiting);
    ExpectRefusedBeforeStream(r, 429, "rate_limit_exceeded");
    EXPECT_GE(r.seconds, kKvWaitMs / 1000.0) << "refused before its KV wait was over";
    EXPECT_EQ(waiting, 1u) << "the draft service never reported it waiting for KV";
  }
  ASSERT_FALSE(long1.ended || long2.ended)
      << "a long request ended before the refusals were checked: the check is void (the "
         "stages ran faster than --emulate-run-us allows?)";
  {
    SCOPED_TRACE("a short request one block larger than what is left");
    uint32_t waiting = 0;
    const HttpResult r = refused_after_wait(static_cast<int>(over - prompt), &waiting);
    ExpectRefusedBeforeStream(r, 429, "rate_limit_exceeded");
    EXPECT_GE(r.seconds, kKvWaitMs / 1000.0);
    EXPECT_EQ(waiting, 1u);
  }
  {
    SCOPED_TRACE("a short request that fits exactly");
    const HttpResult r = HttpRequest(c->http_port, "POST", "/v1/completions",
                                     CompletionBody(static_cast<int>(fit - prompt)));
    const StreamedAnswer a = CheckStreamedAnswer(r, /*chat=*/false);
    EXPECT_EQ(a.problem, "");
    EXPECT_EQ(a.prompt_tokens, static_cast<int>(prompt));
    EXPECT_GE(a.completion_tokens, 1);
    EXPECT_LE(a.completion_tokens, static_cast<int>(fit - prompt));
  }
  EXPECT_FALSE(long1.ended || long2.ended)
      << "a long request ended before the short one was admitted: the check is void";
  const Clock::time_point checked = Clock::now();
  EXPECT_EQ(DraftMetric(*c, "pipeinfer_draft_kv_refused_total"), refused_before + 2);
  EXPECT_EQ(DraftMetric(*c, "pipeinfer_draft_kv_waiting"), 0);

  // The long requests ran to the end of the context, untouched by the refusals next to them.
  long1.Join();
  long2.Join();
  // The margin the emulated pass time left (the checks above are void if it goes to 0).
  std::printf(
      "the long requests ended %.2f s and %.2f s after the refusals and the short request\n",
      std::chrono::duration<double>(long1.ended_at - checked).count(),
      std::chrono::duration<double>(long2.ended_at - checked).count());
  for (LongRequest* l : {&long1, &long2}) {
    EXPECT_TRUE(l->status.ok()) << l->status.error_message() << " " << l->error;
    ASSERT_TRUE(l->finished);
    EXPECT_EQ(l->finish.finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(l->finish.usage().prompt_tokens() + l->finish.usage().completion_tokens(), kContext);
  }

  {
    SCOPED_TRACE("a full-context request once the long ones are gone");
    // Their reservations are released when the draft service sends their SessionCloses, which may
    // lag the last event a little; a refusal here would be a 429 after kKvWaitMs.
    const HttpResult r = HttpRequest(c->http_port, "POST", "/v1/completions", CompletionBody(0));
    const StreamedAnswer a = CheckStreamedAnswer(r, /*chat=*/false);
    EXPECT_EQ(a.problem, "");
    EXPECT_GE(a.content_deltas, 1);
  }

  for (const std::string& s : {c->stage0, c->stage1}) {
    std::string why;
    EXPECT_TRUE(PollUntil([&] { return StageIdle(s, &why); }, std::chrono::seconds(20))) << why;
    const Counters st = StageCounters(s);
    EXPECT_EQ(
        st.count("kv_reservation_overruns_total") ? st.at("kv_reservation_overruns_total") : -1, 0)
        << s;
  }
  EXPECT_EQ(DraftMetric(*c, "pipeinfer_draft_kv_refused_total"), refused_before + 2);
  if (::testing::Test::HasFailure()) std::fprintf(stderr, "%s", c->services->Logs().c_str());
  c->services->Finish();
}

TEST(KvAdmissionTest, NeverFittingRequestIs400AtOnce) {
  constexpr int kKvWaitMs = 20000;  // a request that waited would be noticed
  const int64_t full = BlocksFor(kContext);
  const int64_t capacity = full - 1;  // one block short of a full-context request
  const uint32_t prompt = static_cast<uint32_t>(kPromptIds.size());
  const uint32_t largest = LargestContextWithin(capacity, prompt + 1);
  ASSERT_GT(largest, prompt);
  ASSERT_LT(largest, kContext);
  ASSERT_EQ(BlocksFor(largest + 1), capacity + 1);
  std::printf("capacity %lld blocks; max_context %u fits, %u can never fit\n",
              static_cast<long long>(capacity), largest, largest + 1);

  auto c = StartCluster("load_kv_never_fits_test", capacity, {}, kKvWaitMs);
  ASSERT_NE(c, nullptr) << "the processes did not start";
  ExpectConfigured(*c, capacity);

  {
    SCOPED_TRACE("a full-context request on an empty pipeline that cannot hold it");
    const HttpResult r = HttpRequest(c->http_port, "POST", "/v1/completions", CompletionBody(0));
    ExpectRefusedBeforeStream(r, 400, "context_length_exceeded");
    EXPECT_LT(r.seconds, 5.0) << "it waited for KV that can never be there";
  }
  {
    SCOPED_TRACE("one token (one block) more than the pipeline can ever hold");
    const HttpResult r = HttpRequest(c->http_port, "POST", "/v1/completions",
                                     CompletionBody(static_cast<int>(largest + 1 - prompt)));
    ExpectRefusedBeforeStream(r, 400, "context_length_exceeded");
    EXPECT_LT(r.seconds, 5.0);
  }
  {
    SCOPED_TRACE("the largest request that fits");
    const HttpResult r = HttpRequest(c->http_port, "POST", "/v1/completions",
                                     CompletionBody(static_cast<int>(largest - prompt)));
    const StreamedAnswer a = CheckStreamedAnswer(r, /*chat=*/false);
    EXPECT_EQ(a.problem, "");
    EXPECT_GE(a.content_deltas, 1);
    EXPECT_LE(a.completion_tokens, static_cast<int>(largest - prompt));
  }
  EXPECT_EQ(DraftMetric(*c, "pipeinfer_draft_kv_refused_total"), 2);
  EXPECT_EQ(DraftMetric(*c, "pipeinfer_draft_kv_waiting"), 0);
  for (const std::string& s : {c->stage0, c->stage1}) {
    std::string why;
    EXPECT_TRUE(PollUntil([&] { return StageIdle(s, &why); }, std::chrono::seconds(20))) << why;
    const Counters st = StageCounters(s);
    EXPECT_EQ(
        st.count("kv_reservation_overruns_total") ? st.at("kv_reservation_overruns_total") : -1, 0)
        << s;
  }
  if (::testing::Test::HasFailure()) std::fprintf(stderr, "%s", c->services->Logs().c_str());
  c->services->Finish();
}

}  // namespace
}  // namespace pipeinfer
