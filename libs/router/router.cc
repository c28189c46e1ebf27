#include "router/router.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <httplib.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "chat/chat_template.h"
#include "gguf/llama.h"
#include "gguf/reader.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "metrics/metrics.h"
#include "pipeinfer/v1/draft.grpc.pb.h"
#include "pipeinfer/v1/router.grpc.pb.h"
#include "pipeinfer/v1/stage.grpc.pb.h"
#include "rpc/server.h"
#include "sampling/sampling.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace pipeinfer::router {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

std::string S(absl::string_view v) { return std::string(v.data(), v.size()); }

// ---------------------------------------------------------------------------------------------
// Errors

// A request error: gRPC code, message and (HTTP) the offending parameter / OpenAI code.
struct Error {
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  std::string message;
  std::string param;
  std::string oai_code;
};

Error Invalid(std::string message, std::string param = "") {
  return Error{grpc::StatusCode::INVALID_ARGUMENT, std::move(message), std::move(param), ""};
}

int HttpStatusFor(const Error& e) {
  switch (e.code) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
      return 400;
    case grpc::StatusCode::NOT_FOUND:
      return 404;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return 429;
    case grpc::StatusCode::UNAVAILABLE:
      return 503;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return 504;
    case grpc::StatusCode::CANCELLED:
      return 499;
    default:
      return 500;
  }
}

std::string OaiType(const Error& e) {
  switch (e.code) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::NOT_FOUND:
      return "invalid_request_error";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "rate_limit_exceeded";
    case grpc::StatusCode::UNAVAILABLE:
      return "service_unavailable";
    default:
      return "server_error";
  }
}

json ErrorBody(const Error& e) {
  json err;
  err["message"] = e.message;
  err["type"] = OaiType(e);
  err["param"] = e.param.empty() ? json(nullptr) : json(e.param);
  err["code"] = e.oai_code.empty() ? json(nullptr) : json(e.oai_code);
  return json{{"error", err}};
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

v1::StatusCode ProtoCode(grpc::StatusCode c) { return static_cast<v1::StatusCode>(c); }

// ---------------------------------------------------------------------------------------------
// Admission: at most max_inflight running, at most max_queue waiting.

class Admission {
 public:
  Admission(int max_inflight, int max_queue, prometheus::Gauge* inflight_gauge,
            prometheus::Gauge* queue_gauge)
      : max_inflight_(max_inflight),
        max_queue_(max_queue),
        inflight_gauge_(inflight_gauge),
        queue_gauge_(queue_gauge) {}

  // A held slot; released when destroyed.
  class Slot {
   public:
    explicit Slot(Admission* a) : a_(a) {}
    ~Slot() { a_->Release(); }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;

   private:
    Admission* a_;
  };

  // Null when both the slots and the queue are full.
  std::shared_ptr<Slot> Acquire() {
    std::unique_lock<std::mutex> l(mu_);
    if (inflight_ >= max_inflight_) {
      if (queued_ >= max_queue_) return nullptr;
      ++queued_;
      queue_gauge_->Set(queued_);
      cv_.wait(l, [&] { return inflight_ < max_inflight_; });
      --queued_;
      queue_gauge_->Set(queued_);
    }
    ++inflight_;
    inflight_gauge_->Set(inflight_);
    return std::make_shared<Slot>(this);
  }

 private:
  void Release() {
    std::lock_guard<std::mutex> l(mu_);
    --inflight_;
    inflight_gauge_->Set(inflight_);
    cv_.notify_one();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  const int max_inflight_;
  const int max_queue_;
  int inflight_ = 0;
  int queued_ = 0;
  prometheus::Gauge* inflight_gauge_;
  prometheus::Gauge* queue_gauge_;
};

// ---------------------------------------------------------------------------------------------
// Stop sequences on the text side.

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  // Adds text; returns the text that can be sent now. Sets *matched when a stop sequence was
  // found (the returned text then ends right before it, and everything after is dropped).
  std::string Push(const std::string& text, std::string* matched) {
    pending_ += text;
    size_t best = std::string::npos;
    for (const auto& s : stops_) {
      const size_t p = pending_.find(s);
      if (p != std::string::npos && (best == std::string::npos || p < best)) {
        best = p;
        *matched = s;
      }
    }
    if (best != std::string::npos) {
      std::string out = pending_.substr(0, best);
      pending_.clear();
      return out;
    }
    // Hold back the longest suffix that is a proper prefix of a stop sequence.
    size_t hold = 0;
    for (const auto& s : stops_) {
      const size_t max_len = std::min(s.size() - 1, pending_.size());
      for (size_t len = max_len; len > hold; --len) {
        if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
          hold = len;
          break;
        }
      }
    }
    // Never split a UTF-8 character: the held-back part starts at a character boundary anyway
    // because stop strings are valid UTF-8 and pending_ is valid UTF-8.
    std::string out = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    return out;
  }

  // What is left at the end of the generation.
  std::string Flush() {
    std::string out;
    out.swap(pending_);
    return out;
  }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
};

// ---------------------------------------------------------------------------------------------
// A generation request after validation, in token space.

struct GenRequest {
  std::string request_id;
  std::vector<uint32_t> prompt;
  std::optional<uint32_t> max_tokens;
  bool clamp_max_tokens = false;  // gRPC: clamp to the context; HTTP: error
  v1::SamplingParams sampling;
  std::vector<std::string> stops;  // text stop sequences (client's + template's)
  std::vector<uint32_t> stop_token_ids;
  bool ignore_eos = false;
  v1::SpecConfig spec;
  std::optional<std::chrono::system_clock::time_point> deadline;
};

struct GenResult {
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  std::string stop_sequence;
  v1::SpecCounters spec;
  v1::Timings timings;
};

// Event callbacks of a generation. on_delta returns false when the client is gone.
struct GenSink {
  std::function<bool(const std::string& text, const std::vector<uint32_t>& ids, uint32_t index)>
      on_delta;
  // Checked between events; true = the client went away.
  std::function<bool()> cancelled;
};

std::string RandomId(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng(std::random_device{}() ^
                                   std::hash<std::thread::id>()(std::this_thread::get_id()));
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(rng() ^ counter++));
  return std::string(prefix) + buf;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

class Router::Impl final : public v1::Router::Service {
 public:
  explicit Impl(RouterOptions o) : opt_(std::move(o)) {}
  ~Impl() override { Shutdown(); }

  absl::Status Start() {
    auto file = gguf::GgufFile::Open(opt_.model_path);
    if (!file.ok()) return file.status();
    auto meta = gguf::TokenizerMetadata::FromGguf(**file);
    if (!meta.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(opt_.model_path, ": ", S(meta.status().message())));
    }
    auto tok = tokenizer::Tokenizer::FromGguf(**file);
    if (!tok.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(opt_.model_path, ": ", S(tok.status().message())));
    }
    tok_ = std::move(*tok);
    auto hp = gguf::LlamaHParams::FromGguf(**file);
    if (hp.ok()) n_ctx_ = hp->n_ctx_train;
    if (!opt_.chat_template.empty()) {
      auto t = chat::TemplateByName(opt_.chat_template);
      if (!t) {
        return absl::InvalidArgumentError(
            absl::StrCat("unknown chat template '", opt_.chat_template,
                         "' (known: chatml, llama2, mistral, zephyr, llama3, plain)"));
      }
      template_ = *t;
    } else {
      template_ = chat::DetectTemplate(meta->chat_template.value_or(""));
    }
    if (opt_.model_id.empty()) {
      std::string base = opt_.model_path.substr(opt_.model_path.find_last_of('/') + 1);
      if (base.size() > 5 && base.compare(base.size() - 5, 5, ".gguf") == 0) {
        base.resize(base.size() - 5);
      }
      opt_.model_id = base;
    }
    if (opt_.max_inflight < 1 || opt_.max_queue < 0) {
      return absl::InvalidArgumentError("--max-inflight must be >= 1 and --max-queue >= 0");
    }
    created_ = std::chrono::duration_cast<std::chrono::seconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();

    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    channel_ =
        grpc::CreateCustomChannel(opt_.draft_address, grpc::InsecureChannelCredentials(), args);
    draft_ = v1::Draft::NewStub(channel_);
    {
      // n_ctx as the draft service serves it (it may be smaller than the training context).
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      v1::DraftInfo info;
      if (draft_->GetInfo(&ctx, v1::DraftInfoRequest(), &info).ok() && info.model().n_ctx() > 0) {
        n_ctx_ = info.model().n_ctx();
      }
    }
    if (n_ctx_ == 0) n_ctx_ = 2048;

    SetUpMetrics();

    auto server = rpc::StartServer(opt_.grpc_address, this, 0, &grpc_port_);
    if (!server.ok()) return server.status();
    grpc_server_ = std::move(*server);
    if (auto* h = grpc_server_->GetHealthCheckService()) {
      h->SetServingStatus(true);
      h->SetServingStatus("pipeinfer.v1.Router", true);
    }

    const size_t colon = opt_.http_address.rfind(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("--http must be HOST:PORT, got '", opt_.http_address, "'"));
    }
    const std::string host = opt_.http_address.substr(0, colon);
    int port = 0;
    try {
      port = std::stoi(opt_.http_address.substr(colon + 1));
    } catch (...) {
      return absl::InvalidArgumentError(
          absl::StrCat("--http must be HOST:PORT, got '", opt_.http_address, "'"));
    }
    http_ = std::make_unique<httplib::Server>();
    const size_t threads = static_cast<size_t>(opt_.max_inflight + opt_.max_queue + 8);
    http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    SetUpHttp();
    if (port == 0) {
      http_port_ = http_->bind_to_any_port(host);
    } else {
      http_port_ = http_->bind_to_port(host, port) ? port : -1;
    }
    if (http_port_ <= 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on ", opt_.http_address));
    }
    http_thread_ = std::thread([this] { http_->listen_after_bind(); });
    for (int i = 0; i < 500 && !http_->is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return absl::OkStatus();
  }

  void Shutdown() {
    std::lock_guard<std::mutex> l(shutdown_mu_);
    if (down_) return;
    down_ = true;
    if (http_) http_->stop();
    if (http_thread_.joinable()) http_thread_.join();
    if (grpc_server_) {
      grpc_server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    }
    done_cv_.notify_all();
  }

  void Wait() {
    std::unique_lock<std::mutex> l(shutdown_mu_);
    done_cv_.wait(l, [&] { return down_; });
  }

  int http_port() const { return http_port_; }
  int grpc_port() const { return grpc_port_; }
  const std::string& model_id() const { return opt_.model_id; }

  // -------------------------------------------------------------------------------------------
  // gRPC Router service

  grpc::Status Chat(grpc::ServerContext* ctx, const v1::ChatRequest* req,
                    grpc::ServerWriter<v1::GenerateEvent>* writer) override {
    const auto t0 = Clock::now();
    GenRequest g;
    std::optional<Error> err = CheckModel(req->model());
    if (!err) {
      std::vector<chat::ChatMessage> msgs;
      for (const auto& m : req->messages()) msgs.push_back({m.role(), m.content()});
      err = BuildChat(msgs, req->chat_template(), &g);
    }
    if (!err) err = FromOptions(req->options(), &g);
    if (!err) err = SetRequestId(req->request_id(), &g);
    return ServeGrpc("grpc_chat", ctx, t0, err, &g, writer);
  }

  grpc::Status Complete(grpc::ServerContext* ctx, const v1::CompletionRequest* req,
                        grpc::ServerWriter<v1::GenerateEvent>* writer) override {
    const auto t0 = Clock::now();
    GenRequest g;
    std::optional<Error> err = CheckModel(req->model());
    if (!err) {
      if (req->has_token_ids()) {
        if (req->token_ids().ids_size() == 0) err = Invalid("token_ids must not be empty");
        const bool bos = req->has_add_bos() && req->add_bos();
        if (bos && tok_->bos_id() >= 0) g.prompt.push_back(static_cast<uint32_t>(tok_->bos_id()));
        for (uint32_t id : req->token_ids().ids()) {
          if (static_cast<int64_t>(id) >= tok_->n_vocab()) {
            err = Invalid(
                absl::StrCat("token id ", id, " is out of range (n_vocab ", tok_->n_vocab(), ")"));
            break;
          }
          g.prompt.push_back(id);
        }
      } else if (req->has_text()) {
        if (!tokenizer::IsValidUtf8(req->text())) {
          err = Invalid("prompt is not valid UTF-8", "prompt");
        } else {
          const bool bos = req->has_add_bos() ? req->add_bos() : tok_->add_bos();
          const bool special = req->has_parse_special() ? req->parse_special() : true;
          for (int32_t id : tok_->Encode(req->text(), bos, special)) g.prompt.push_back(id);
        }
      } else {
        err = Invalid("exactly one of text or token_ids must be set", "prompt");
      }
    }
    if (!err) err = FromOptions(req->options(), &g);
    if (!err) err = SetRequestId(req->request_id(), &g);
    return ServeGrpc("grpc_complete", ctx, t0, err, &g, writer);
  }

  grpc::Status ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* resp) override {
    FillModel(resp->add_models());
    CountRequest("grpc_models", 0);
    return grpc::Status::OK;
  }

  grpc::Status GetClusterStats(grpc::ServerContext* sctx, const v1::ClusterStatsRequest* req,
                               v1::ClusterStatsResponse* resp) override {
    auto* me = resp->add_services();
    metrics_->FillServiceStats(me);
    me->set_address(absl::StrCat(opt_.grpc_address));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::StatsRequest sreq;
    sreq.set_include_pipeline(req->include_stages());
    v1::StatsResponse sresp;
    const grpc::Status st = draft_->GetStats(&ctx, sreq, &sresp);
    if (st.ok()) {
      if (req->include_stages()) CompleteStageChain(sctx, &sresp);
      for (auto& s : *sresp.mutable_services()) *resp->add_services() = std::move(s);
    } else {
      auto* d = resp->add_services();
      d->set_service("draft");
      d->set_address(opt_.draft_address);
      d->mutable_error()->set_code(ProtoCode(st.error_code()));
      d->mutable_error()->set_message(st.error_message());
    }
    resp->set_collected_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    std::chrono::system_clock::now().time_since_epoch())
                                    .count());
    return grpc::Status::OK;
  }

 private:
  // A draft service that asks stage 0 and the last stage separately (not stage 0 with
  // include_pipeline) lists no middle stage. When the stage indices it lists ("stage<i>") have
  // gaps, the chain is taken from stage 0 instead: Stage.GetStats with include_pipeline returns
  // every stage in pipeline order.
  void CompleteStageChain(grpc::ServerContext* sctx, v1::StatsResponse* draft_resp) {
    std::set<int> indices;
    std::string stage0;
    for (const auto& s : draft_resp->services()) {
      const std::string& n = s.service();
      if (n.size() <= 5 || n.compare(0, 5, "stage") != 0) continue;
      const std::string digits = n.substr(n[5] == '/' ? 6 : 5);
      if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) continue;
      const int i = std::stoi(digits);
      indices.insert(i);
      if (i == 0 && !s.has_error()) stage0 = s.address();
    }
    if (indices.empty() || stage0.empty() ||
        static_cast<int>(indices.size()) == *indices.rbegin() + 1) {
      return;
    }
    auto stub = v1::Stage::NewStub(grpc::CreateChannel(stage0, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(
        std::min(sctx->deadline(), std::chrono::system_clock::now() + std::chrono::seconds(5)));
    v1::StatsRequest req;
    req.set_include_pipeline(true);
    v1::StatsResponse chain;
    if (!stub->GetStats(&ctx, req, &chain).ok() || chain.services_size() == 0) return;
    if (chain.services(0).address().empty()) chain.mutable_services(0)->set_address(stage0);
    v1::StatsResponse out;
    for (auto& s : *draft_resp->mutable_services()) {
      if (s.service().compare(0, 5, "stage") != 0) *out.add_services() = std::move(s);
    }
    for (auto& s : *chain.mutable_services()) *out.add_services() = std::move(s);
    *draft_resp = std::move(out);
  }

  // -------------------------------------------------------------------------------------------
  // Request building

  std::optional<Error> CheckModel(const std::string& model) const {
    if (!model.empty() && model != opt_.model_id) {
      return Error{
          grpc::StatusCode::NOT_FOUND,
          absl::StrCat("The model '", model, "' does not exist (served: ", opt_.model_id, ")"),
          "model", "model_not_found"};
    }
    return std::nullopt;
  }

  std::optional<Error> SetRequestId(const std::string& id, GenRequest* g) const {
    if (id.size() > 128) return Invalid("request_id is longer than 128 characters", "request_id");
    for (char c : id) {
      if (c < 0x20 || c > 0x7e) return Invalid("request_id must be printable ASCII");
    }
    g->request_id = id.empty() ? RandomId("req-") : id;
    return std::nullopt;
  }

  std::optional<Error> BuildChat(const std::vector<chat::ChatMessage>& msgs,
                                 const std::string& template_name, GenRequest* g) const {
    if (msgs.empty()) return Invalid("messages must not be empty", "messages");
    for (const auto& m : msgs) {
      if (!tokenizer::IsValidUtf8(m.content)) {
        return Invalid("message content is not valid UTF-8", "messages");
      }
    }
    chat::TemplateId t = template_;
    if (!template_name.empty()) {
      auto named = chat::TemplateByName(template_name);
      if (!named) {
        auto detected = chat::TryDetectTemplate(template_name);
        if (!detected) {
          return Invalid(absl::StrCat("unknown chat template '", template_name, "'"),
                         "chat_template");
        }
        named = detected;
      }
      t = *named;
    }
    std::vector<chat::TextRange> content;
    auto text = chat::Render(t, msgs, /*add_generation_prompt=*/true, &content);
    if (!text.ok()) return Invalid(S(text.status().message()), "messages");
    // The template's own markers are control tokens; the same text inside a message is not.
    std::vector<std::pair<size_t, size_t>> literal;
    for (const chat::TextRange& r : content) literal.emplace_back(r.offset, r.length);
    for (int32_t id : tok_->Encode(*text, tok_->add_bos(), /*parse_special=*/true, literal)) {
      g->prompt.push_back(static_cast<uint32_t>(id));
    }
    g->stops = chat::StopStrings(t);
    return std::nullopt;
  }

  std::optional<Error> AddStops(const std::vector<std::string>& stops, GenRequest* g) const {
    if (stops.size() > 4) return Invalid("at most 4 stop sequences are allowed", "stop");
    for (const auto& s : stops) {
      if (s.empty() || s.size() > 256) {
        return Invalid("each stop sequence must be 1..256 bytes", "stop");
      }
      if (!tokenizer::IsValidUtf8(s)) return Invalid("stop is not valid UTF-8", "stop");
      g->stops.push_back(s);
    }
    return std::nullopt;
  }

  std::optional<Error> CheckSampling(const v1::SamplingParams& p) const {
    sampling::SamplingParams sp;
    if (p.has_temperature()) sp.temperature = p.temperature();
    if (p.has_top_k()) sp.top_k = p.top_k();
    if (p.has_top_p()) sp.top_p = p.top_p();
    if (p.has_min_p()) sp.min_p = p.min_p();
    if (p.has_repetition_penalty()) sp.repetition_penalty = p.repetition_penalty();
    if (p.has_repeat_last_n()) sp.repeat_last_n = p.repeat_last_n();
    const absl::Status st = sampling::Validate(sp);
    if (!st.ok()) return Invalid(S(st.message()));
    return std::nullopt;
  }

  std::optional<Error> FromOptions(const v1::GenerationOptions& o, GenRequest* g) const {
    if (o.has_max_tokens()) {
      if (o.max_tokens() < 1) return Invalid("max_tokens must be >= 1", "max_tokens");
      g->max_tokens = o.max_tokens();
    }
    g->clamp_max_tokens = true;
    if (auto e = CheckSampling(o.sampling())) return e;
    g->sampling = o.sampling();
    if (auto e = AddStops({o.stop().begin(), o.stop().end()}, g)) return e;
    for (uint32_t id : o.stop_token_ids()) g->stop_token_ids.push_back(id);
    g->ignore_eos = o.ignore_eos();
    g->spec = o.spec();
    return std::nullopt;
  }

  // Context limit; fills max_tokens.
  std::optional<Error> CheckContext(GenRequest* g) const {
    if (g->prompt.empty()) return Invalid("the prompt is empty", "prompt");
    const uint64_t n = g->prompt.size();
    if (n >= n_ctx_) {
      return Error{grpc::StatusCode::OUT_OF_RANGE,
                   absl::StrCat("This model's maximum context length is ", n_ctx_,
                                " tokens. However, your prompt has ", n, " tokens."),
                   "messages", "context_length_exceeded"};
    }
    const uint32_t room = static_cast<uint32_t>(n_ctx_ - n);
    if (!g->max_tokens) {
      g->max_tokens = room;
    } else if (*g->max_tokens > room) {
      if (g->clamp_max_tokens) {
        g->max_tokens = room;
      } else {
        return Error{
            grpc::StatusCode::OUT_OF_RANGE,
            absl::StrCat("This model's maximum context length is ", n_ctx_,
                         " tokens. However, you requested ", n + *g->max_tokens, " tokens (", n,
                         " in the prompt, ", *g->max_tokens, " for the completion)."),
            "max_tokens", "context_length_exceeded"};
      }
    }
    return std::nullopt;
  }

  void FillModel(v1::ModelInfo* m) const {
    m->set_id(opt_.model_id);
    m->set_n_ctx(n_ctx_);
    m->set_n_vocab(static_cast<uint32_t>(tok_->n_vocab()));
    m->set_owned_by("pipeinfer");
    m->set_created(created_);
    m->set_replicas(1);
  }

  // -------------------------------------------------------------------------------------------
  // The generation core: calls Draft.Generate and turns token batches into text deltas.
  // Returns nullopt on success (result filled), or the error. *started tells whether any delta
  // was delivered.

  std::optional<Error> Generate(GenRequest& g, grpc::ClientContext* ctx, const GenSink& sink,
                                GenResult* result, bool* started) {
    *started = false;
    const auto t_start = Clock::now();
    v1::GenerateRequest req;
    req.set_request_id(g.request_id);
    for (uint32_t id : g.prompt) req.add_prompt_token_ids(id);
    if (g.max_tokens) req.set_max_tokens(*g.max_tokens);
    *req.mutable_sampling() = g.sampling;
    for (uint32_t id : g.stop_token_ids) req.add_stop_token_ids(id);
    req.set_ignore_eos(g.ignore_eos);
    *req.mutable_spec() = g.spec;
    if (g.deadline) ctx->set_deadline(*g.deadline);

    auto reader = draft_->Generate(ctx, req);
    tokenizer::IncrementalDetokenizer detok(*tok_);
    StopMatcher stops(g.stops);
    result->prompt_tokens = static_cast<uint32_t>(g.prompt.size());
    v1::GenerateResponse ev;
    bool finished = false, stopped = false, client_gone = false;
    std::optional<Error> draft_error;
    Clock::time_point last_token;
    uint32_t sent_index = 0;
    std::vector<uint32_t> unsent_ids;
    while (reader->Read(&ev)) {
      if (sink.cancelled && sink.cancelled()) {
        client_gone = true;
        ctx->TryCancel();
        break;
      }
      if (ev.has_tokens()) {
        const auto now = Clock::now();
        const int n = ev.tokens().token_ids_size();
        if (result->completion_tokens == 0) {
          ttft_->Observe(std::chrono::duration<double>(now - t_start).count());
          result->timings.set_ttft_us(
              std::chrono::duration_cast<std::chrono::microseconds>(now - t_start).count());
        } else if (n > 0) {
          const double dt = std::chrono::duration<double>(now - last_token).count() / n;
          for (int i = 0; i < n; ++i) itl_->Observe(dt);
        }
        last_token = now;
        result->completion_tokens += n;
        generated_tokens_->Increment(n);
        result->spec = ev.tokens().counters();
        std::string text;
        for (uint32_t id : ev.tokens().token_ids()) {
          unsent_ids.push_back(id);
          text += detok.Push(static_cast<int32_t>(id));
        }
        std::string out = stops.Push(text, &result->stop_sequence);
        if (!result->stop_sequence.empty()) stopped = true;
        if (!out.empty() || !unsent_ids.empty()) {
          if (!sink.on_delta(out, unsent_ids, sent_index)) {
            client_gone = true;
            ctx->TryCancel();
            break;
          }
          *started = true;
          sent_index += static_cast<uint32_t>(unsent_ids.size());
          unsent_ids.clear();
        }
        if (stopped) {
          ctx->TryCancel();
          break;
        }
      } else if (ev.has_finished()) {
        finished = true;
        result->finish = ev.finished().finish_reason();
        result->spec = ev.finished().counters();
        result->timings.set_prefill_us(ev.finished().timings().prefill_us());
        result->timings.set_decode_us(ev.finished().timings().decode_us());
      } else if (ev.has_error()) {
        draft_error =
            Error{static_cast<grpc::StatusCode>(ev.error().code()), ev.error().message(), "", ""};
      }
    }
    const grpc::Status st = reader->Finish();
    result->timings.set_total_us(
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t_start).count());
    if (client_gone) {
      return Error{grpc::StatusCode::CANCELLED, "the client went away", "", ""};
    }
    if (stopped) {
      result->finish = v1::FINISH_REASON_STOP;
      return std::nullopt;
    }
    if (!st.ok() || !finished) {
      if (draft_error) return draft_error;
      Error e{st.ok() ? grpc::StatusCode::INTERNAL : st.error_code(),
              st.ok() ? "the draft service ended the stream without a result"
                      : absl::StrCat("draft service: ", st.error_message()),
              "", ""};
      if (e.code == grpc::StatusCode::OUT_OF_RANGE) e.oai_code = "context_length_exceeded";
      return e;
    }
    // The rest of the text (an incomplete character becomes U+FFFD).
    std::string tail = stops.Push(detok.Flush(), &result->stop_sequence);
    if (!result->stop_sequence.empty()) {
      result->finish = v1::FINISH_REASON_STOP;
    } else {
      tail += stops.Flush();
    }
    if (!tail.empty() || !unsent_ids.empty()) {
      if (!sink.on_delta(tail, unsent_ids, sent_index)) {
        return Error{grpc::StatusCode::CANCELLED, "the client went away", "", ""};
      }
      *started = true;
    }
    return std::nullopt;
  }

  grpc::Status ServeGrpc(const std::string& endpoint, grpc::ServerContext* sctx,
                         Clock::time_point t0, std::optional<Error> err, GenRequest* g,
                         grpc::ServerWriter<v1::GenerateEvent>* writer) {
    if (!err) err = CheckContext(g);
    if (err) {
      CountRequest(endpoint, static_cast<int>(err->code));
      return grpc::Status(err->code, err->message);
    }
    auto slot = admission_->Acquire();
    if (!slot) {
      CountRequest(endpoint, static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "too many requests: the admission queue is full, retry later");
    }
    prompt_tokens_->Increment(static_cast<double>(g->prompt.size()));
    sctx->AddInitialMetadata("x-request-id", g->request_id);
    // Propagates the client's deadline and cancellation to the draft call.
    auto ctx = grpc::ClientContext::FromServerContext(*sctx);
    GenSink sink;
    sink.on_delta = [&](const std::string& text, const std::vector<uint32_t>& ids, uint32_t index) {
      v1::GenerateEvent ev;
      ev.mutable_delta()->set_text(text);
      for (uint32_t id : ids) ev.mutable_delta()->add_token_ids(id);
      ev.mutable_delta()->set_index(index);
      return writer->Write(ev);
    };
    sink.cancelled = [sctx] { return sctx->IsCancelled(); };
    GenResult r;
    r.timings.set_queue_us(
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count());
    bool started = false;
    err = Generate(*g, ctx.get(), sink, &r, &started);
    if (err) {
      CountRequest(endpoint, static_cast<int>(err->code));
      if (started) {
        v1::GenerateEvent ev;
        auto* e = ev.mutable_error();
        e->set_code(ProtoCode(err->code));
        e->set_message(err->message);
        e->set_origin("router");
        e->set_request_id(g->request_id);
        writer->Write(ev);
      }
      return grpc::Status(err->code, err->message);
    }
    v1::GenerateEvent ev;
    auto* f = ev.mutable_finished();
    f->set_finish_reason(r.finish);
    f->mutable_usage()->set_prompt_tokens(r.prompt_tokens);
    f->mutable_usage()->set_completion_tokens(r.completion_tokens);
    f->mutable_usage()->set_total_tokens(r.prompt_tokens + r.completion_tokens);
    *f->mutable_timings() = r.timings;
    f->set_model(opt_.model_id);
    f->set_stop_sequence(r.stop_sequence);
    *f->mutable_spec() = r.spec;
    f->set_request_id(g->request_id);
    writer->Write(ev);
    CountRequest(endpoint, 0);
    return grpc::Status::OK;
  }

  // -------------------------------------------------------------------------------------------
  // HTTP

  void SendError(httplib::Response& res, const std::string& endpoint, const Error& e) {
    const int status = HttpStatusFor(e);
    res.status = status;
    if (status == 429) res.set_header("Retry-After", std::to_string(opt_.retry_after_s));
    res.set_content(Dump(ErrorBody(e)), "application/json");
    CountRequest(endpoint, status);
  }

  // Reads an optional field of a JSON type; an error for the wrong type.
  template <typename T>
  static std::optional<Error> Get(const json& body, const char* key, std::optional<T>* out) {
    auto it = body.find(key);
    if (it == body.end() || it->is_null()) return std::nullopt;
    if constexpr (std::is_same_v<T, bool>) {
      if (!it->is_boolean()) return Invalid(absl::StrCat("'", key, "' must be a boolean"), key);
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (!it->is_string()) return Invalid(absl::StrCat("'", key, "' must be a string"), key);
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!it->is_number()) return Invalid(absl::StrCat("'", key, "' must be a number"), key);
    } else {
      if (!it->is_number_integer()) {
        return Invalid(absl::StrCat("'", key, "' must be an integer"), key);
      }
    }
    *out = it->get<T>();
    return std::nullopt;
  }

  // Common OpenAI fields -> GenRequest.
  std::optional<Error> ParseCommon(const json& body, bool chat, GenRequest* g, bool* stream) {
    std::optional<std::string> model;
    if (auto e = Get(body, "model", &model)) return e;
    if (auto e = CheckModel(model.value_or(""))) return e;
    std::optional<int64_t> n, max_tokens, max_completion_tokens, seed, top_k;
    std::optional<double> temperature, top_p, repetition_penalty;
    std::optional<bool> stream_opt;
    if (auto e = Get(body, "n", &n)) return e;
    if (n && *n != 1) return Invalid("only n = 1 is supported", "n");
    if (auto e = Get(body, "max_tokens", &max_tokens)) return e;
    if (auto e = Get(body, "max_completion_tokens", &max_completion_tokens)) return e;
    if (max_completion_tokens) max_tokens = max_completion_tokens;
    if (max_tokens) {
      if (*max_tokens < 1 || *max_tokens > 0xffffffffLL) {
        return Invalid("max_tokens must be >= 1", "max_tokens");
      }
      g->max_tokens = static_cast<uint32_t>(*max_tokens);
    }
    if (auto e = Get(body, "temperature", &temperature)) return e;
    if (auto e = Get(body, "top_p", &top_p)) return e;
    if (auto e = Get(body, "top_k", &top_k)) return e;
    if (auto e = Get(body, "repetition_penalty", &repetition_penalty)) return e;
    if (auto e = Get(body, "seed", &seed)) return e;
    if (auto e = Get(body, "stream", &stream_opt)) return e;
    *stream = stream_opt.value_or(false);
    g->sampling.set_temperature(static_cast<float>(temperature.value_or(1.0)));
    if (top_p) g->sampling.set_top_p(static_cast<float>(*top_p));
    if (top_k) {
      if (*top_k < 0 || *top_k > 1000000000) return Invalid("top_k must be >= 0", "top_k");
      g->sampling.set_top_k(static_cast<int32_t>(*top_k));
    }
    if (repetition_penalty) {
      g->sampling.set_repetition_penalty(static_cast<float>(*repetition_penalty));
    }
    if (seed) g->sampling.set_seed(static_cast<uint64_t>(*seed));
    if (auto e = CheckSampling(g->sampling)) {
      const std::string& m = e->message;
      for (const char* p : {"temperature", "top_p", "top_k", "repetition_penalty"}) {
        if (m.rfind(p, 0) == 0) e->param = p;
      }
      return e;
    }
    auto it = body.find("stop");
    if (it != body.end() && !it->is_null()) {
      std::vector<std::string> stops;
      if (it->is_string()) {
        stops.push_back(it->get<std::string>());
      } else if (it->is_array()) {
        for (const auto& s : *it) {
          if (!s.is_string()) return Invalid("'stop' must be a string or an array of strings");
          stops.push_back(s.get<std::string>());
        }
      } else {
        return Invalid("'stop' must be a string or an array of strings", "stop");
      }
      if (auto e = AddStops(stops, g)) return e;
    }
    g->request_id = RandomId(chat ? "chatcmpl-" : "cmpl-");
    return std::nullopt;
  }

  void HandleGeneration(const httplib::Request& req, httplib::Response& res, bool chat) {
    const std::string endpoint = chat ? "/v1/chat/completions" : "/v1/completions";
    json body;
    try {
      body = json::parse(req.body);
    } catch (const std::exception& ex) {
      SendError(
          res, endpoint,
          Invalid(absl::StrCat("We could not parse the JSON body of your request: ", ex.what())));
      return;
    }
    if (!body.is_object()) {
      SendError(res, endpoint, Invalid("the request body must be a JSON object"));
      return;
    }
    auto g = std::make_shared<GenRequest>();
    bool stream = false;
    std::optional<Error> err;
    try {
      err = ParseCommon(body, chat, g.get(), &stream);
      if (!err && chat) {
        auto it = body.find("messages");
        if (it == body.end() || !it->is_array()) {
          err = Invalid("'messages' must be an array of messages", "messages");
        } else {
          std::vector<chat::ChatMessage> msgs;
          for (const auto& m : *it) {
            if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
              err = Invalid("each message must be an object with a string 'role'", "messages");
              break;
            }
            std::string content;
            if (m.contains("content") && !m["content"].is_null()) {
              const auto& c = m["content"];
              if (c.is_string()) {
                content = c.get<std::string>();
              } else if (c.is_array()) {  // [{"type": "text", "text": ...}]
                for (const auto& part : c) {
                  if (!part.is_object() || !part.contains("text") || !part["text"].is_string()) {
                    err = Invalid("only text content parts are supported", "messages");
                    break;
                  }
                  content += part["text"].get<std::string>();
                }
              } else {
                err = Invalid("message 'content' must be a string", "messages");
              }
            }
            if (err) break;
            const std::string role = m["role"].get<std::string>();
            if (role != "system" && role != "user" && role != "assistant") {
              err =
                  Invalid(absl::StrCat("unsupported role '", role, "' (system, user or assistant)"),
                          "messages");
              break;
            }
            msgs.push_back({role, content});
          }
          if (!err) {
            std::vector<std::string> client_stops = g->stops;
            g->stops.clear();
            err = BuildChat(msgs, "", g.get());
            for (auto& s : client_stops) g->stops.push_back(s);
          }
        }
      } else if (!err) {
        auto it = body.find("prompt");
        std::string prompt;
        if (it == body.end() || it->is_null()) {
          err = Invalid("'prompt' is required", "prompt");
        } else if (it->is_string()) {
          prompt = it->get<std::string>();
        } else if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) {
          prompt = (*it)[0].get<std::string>();
        } else if (it->is_array() && !it->empty() && (*it)[0].is_number_integer()) {
          for (const auto& v : *it) {
            if (!v.is_number_integer() || v.get<int64_t>() < 0 ||
                v.get<int64_t>() >= tok_->n_vocab()) {
              err = Invalid("token ids in 'prompt' must be integers < n_vocab", "prompt");
              break;
            }
            g->prompt.push_back(v.get<uint32_t>());
          }
        } else {
          err = Invalid("'prompt' must be a string (or one string, or an array of token ids)",
                        "prompt");
        }
        if (!err && g->prompt.empty()) {
          if (!tokenizer::IsValidUtf8(prompt)) {
            err = Invalid("prompt is not valid UTF-8", "prompt");
          } else {
            for (int32_t id : tok_->Encode(prompt, tok_->add_bos(), /*parse_special=*/false)) {
              g->prompt.push_back(static_cast<uint32_t>(id));
            }
          }
        }
      }
      if (!err) err = CheckContext(g.get());
    } catch (const std::exception& ex) {
      err = Invalid(absl::StrCat("invalid request: ", ex.what()));
    }
    if (err) {
      SendError(res, endpoint, *err);
      return;
    }
    auto slot = admission_->Acquire();
    if (!slot) {
      SendError(res, endpoint,
                Error{grpc::StatusCode::RESOURCE_EXHAUSTED,
                      "Too many requests: the router's queue is full. Retry later.", "",
                      "rate_limit_exceeded"});
      return;
    }
    prompt_tokens_->Increment(static_cast<double>(g->prompt.size()));
    const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
    const std::string object = chat ? "chat.completion" : "text_completion";
    const std::string id = g->request_id;

    if (!stream) {
      grpc::ClientContext ctx;
      std::string text;
      GenSink sink;
      sink.on_delta = [&](const std::string& t, const std::vector<uint32_t>&, uint32_t) {
        text += t;
        return true;
      };
      GenResult r;
      bool started = false;
      err = Generate(*g, &ctx, sink, &r, &started);
      slot.reset();
      if (err) {
        SendError(res, endpoint, *err);
        return;
      }
      json choice{{"index", 0}, {"finish_reason", FinishName(r.finish)}};
      if (chat) {
        choice["message"] = {{"role", "assistant"}, {"content", text}};
      } else {
        choice["text"] = text;
        choice["logprobs"] = nullptr;
      }
      json out{{"id", id},
               {"object", object},
               {"created", created},
               {"model", opt_.model_id},
               {"choices", json::array({choice})},
               {"usage",
                {{"prompt_tokens", r.prompt_tokens},
                 {"completion_tokens", r.completion_tokens},
                 {"total_tokens", r.prompt_tokens + r.completion_tokens}}}};
      res.status = 200;
      res.set_content(Dump(out), "application/json");
      CountRequest(endpoint, 200);
      return;
    }

    // Streaming: the generation runs on its own thread and hands SSE events to the content
    // provider. The handler waits for the first text (or the end): a request that fails before
    // producing anything gets a proper HTTP error status instead of a 200 with an error event.
    struct StreamRun {
      std::mutex mu;
      std::condition_variable cv;
      std::deque<std::string> events;  // complete "data: ...\n\n" events
      bool done = false;
      std::optional<Error> error;
      GenResult result;
      std::atomic<bool> gone{false};
      grpc::ClientContext ctx;
      std::thread worker;
    };
    auto run = std::make_shared<StreamRun>();
    const std::string chunk_object = chat ? "chat.completion.chunk" : "text_completion";
    auto chunk = [this, chat, id, created, chunk_object](const json& delta_or_text,
                                                         const json& finish) {
      json choice{{"index", 0}, {"finish_reason", finish}};
      if (chat) {
        choice["delta"] = delta_or_text;
      } else {
        choice["text"] = delta_or_text;
        choice["logprobs"] = nullptr;
      }
      return json{{"id", id},
                  {"object", chunk_object},
                  {"created", created},
                  {"model", opt_.model_id},
                  {"choices", json::array({choice})}};
    };
    auto event = [](const json& j) { return "data: " + Dump(j) + "\n\n"; };
    run->worker = std::thread([this, g, run, slot, chat, chunk, event]() mutable {
      GenSink gs;
      gs.on_delta = [&](const std::string& t, const std::vector<uint32_t>&, uint32_t) {
        if (run->gone) return false;
        if (t.empty()) return true;
        {
          std::lock_guard<std::mutex> l(run->mu);
          run->events.push_back(event(chunk(chat ? json{{"content", t}} : json(t), nullptr)));
        }
        run->cv.notify_all();
        return true;
      };
      gs.cancelled = [&] { return run->gone.load(); };
      GenResult r;
      bool started = false;
      std::optional<Error> e = Generate(*g, &run->ctx, gs, &r, &started);
      slot.reset();
      {
        std::lock_guard<std::mutex> l(run->mu);
        run->error = std::move(e);
        run->result = r;
        run->done = true;
      }
      run->cv.notify_all();
    });
    {
      std::unique_lock<std::mutex> l(run->mu);
      run->cv.wait(l, [&] { return run->done || !run->events.empty(); });
      if (run->done && run->error && run->events.empty()) {
        const Error e = *run->error;
        l.unlock();
        run->worker.join();
        SendError(res, endpoint, e);
        return;
      }
    }
    res.status = 200;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Request-Id", id);
    CountRequest(endpoint, 200);
    res.set_chunked_content_provider(
        "text/event-stream",
        [run, chat, chunk, event](size_t, httplib::DataSink& sink) {
          auto send = [&](const std::string& ev) {
            if (sink.is_writable() && sink.write(ev.data(), ev.size())) return true;
            run->gone = true;
            run->ctx.TryCancel();
            return false;
          };
          bool ok = true;
          if (chat) ok = send(event(chunk(json{{"role", "assistant"}, {"content", ""}}, nullptr)));
          while (ok) {
            std::unique_lock<std::mutex> l(run->mu);
            run->cv.wait(l, [&] { return run->done || !run->events.empty(); });
            if (run->events.empty()) break;  // done
            std::string ev = std::move(run->events.front());
            run->events.pop_front();
            l.unlock();
            ok = send(ev);
          }
          if (ok) {
            std::lock_guard<std::mutex> l(run->mu);
            if (run->error) {
              if (run->error->code != grpc::StatusCode::CANCELLED)
                send(event(ErrorBody(*run->error)));
            } else {
              const GenResult& r = run->result;
              json last = chunk(chat ? json::object() : json(""), FinishName(r.finish));
              last["usage"] = {{"prompt_tokens", r.prompt_tokens},
                               {"completion_tokens", r.completion_tokens},
                               {"total_tokens", r.prompt_tokens + r.completion_tokens}};
              send(event(last));
            }
            send("data: [DONE]\n\n");
          }
          sink.done();
          return true;
        },
        [run](bool) {
          // The response is finished or abandoned: stop the generation and reap its thread.
          run->gone = true;
          run->ctx.TryCancel();
          if (run->worker.joinable()) run->worker.join();
        });
  }

  static std::string FinishName(v1::FinishReason r) {
    return r == v1::FINISH_REASON_LENGTH ? "length" : "stop";
  }

  bool DraftServing() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    auto stub = grpc::health::v1::Health::NewStub(channel_);
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    return stub->Check(&ctx, req, &resp).ok() &&
           resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  }

  void SetUpHttp() {
    http_->Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& r) {
      HandleGeneration(q, r, true);
    });
    http_->Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) {
      HandleGeneration(q, r, false);
    });
    http_->Get("/v1/models", [this](const httplib::Request&, httplib::Response& r) {
      json m{{"id", opt_.model_id},
             {"object", "model"},
             {"created", created_},
             {"owned_by", "pipeinfer"},
             {"context_length", n_ctx_}};
      r.set_content(Dump(json{{"object", "list"}, {"data", json::array({m})}}), "application/json");
      CountRequest("/v1/models", 200);
    });
    http_->Get("/health", [this](const httplib::Request&, httplib::Response& r) {
      r.set_content("{\"status\":\"ok\"}", "application/json");
      CountRequest("/health", 200);
    });
    http_->Get("/ready", [this](const httplib::Request&, httplib::Response& r) {
      const bool ok = DraftServing();
      r.status = ok ? 200 : 503;
      r.set_content(ok ? "{\"status\":\"ready\"}" : "{\"status\":\"draft service not serving\"}",
                    "application/json");
      CountRequest("/ready", r.status);
    });
    http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& r) {
      CountRequest("/metrics", 200);
      r.set_content(metrics_->Serialize(), "text/plain; version=0.0.4; charset=utf-8");
    });
    http_->set_error_handler([](const httplib::Request&, httplib::Response& r) {
      if (!r.body.empty()) return;
      Error e{grpc::StatusCode::NOT_FOUND, "not found", "", ""};
      if (r.status == 404) {
        e.message = "Unknown URL";
      } else {
        e.message = absl::StrCat("HTTP ", r.status);
      }
      r.set_content(Dump(ErrorBody(e)), "application/json");
    });
    http_->set_exception_handler([](const httplib::Request&, httplib::Response& r,
                                    std::exception_ptr) {
      r.status = 500;
      r.set_content(Dump(ErrorBody(Error{grpc::StatusCode::INTERNAL, "internal error", "", ""})),
                    "application/json");
    });
  }

  // -------------------------------------------------------------------------------------------
  // Metrics

  void SetUpMetrics() {
    metrics_ = std::make_shared<metrics::Metrics>("router", "router");
    metrics::Metrics& m = *metrics_;
    requests_ = &m.CounterFamily(
        "requests_total", "Requests by endpoint and status code (HTTP status, or gRPC code)");
    prompt_tokens_ = &m.Counter("prompt_tokens_total", "Prompt tokens of admitted requests");
    generated_tokens_ =
        &m.Counter("generated_tokens_total", "Completion tokens received from the draft service");
    ttft_ = &m.Histogram("time_to_first_token_seconds",
                         "Time from the draft call to the first generated token",
                         {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30});
    itl_ = &m.Histogram("inter_token_latency_seconds", "Time between consecutive generated tokens",
                        {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5});
    auto* inflight = &m.Gauge("requests_in_flight", "Requests generating now");
    auto* queue = &m.Gauge("queue_depth", "Requests waiting for an admission slot");
    admission_ = std::make_unique<Admission>(opt_.max_inflight, opt_.max_queue, inflight, queue);
  }

  void CountRequest(const std::string& endpoint, int code) {
    requests_->Add({{"endpoint", endpoint}, {"code", std::to_string(code)}}).Increment();
  }

  RouterOptions opt_;
  std::unique_ptr<tokenizer::Tokenizer> tok_;
  chat::TemplateId template_ = chat::TemplateId::kChatml;
  uint32_t n_ctx_ = 0;
  int64_t created_ = 0;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Draft::Stub> draft_;
  std::unique_ptr<grpc::Server> grpc_server_;
  int grpc_port_ = 0;
  std::unique_ptr<httplib::Server> http_;
  std::thread http_thread_;
  int http_port_ = 0;

  std::shared_ptr<metrics::Metrics> metrics_;
  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  prometheus::Counter* prompt_tokens_ = nullptr;
  prometheus::Counter* generated_tokens_ = nullptr;
  prometheus::Histogram* ttft_ = nullptr;
  prometheus::Histogram* itl_ = nullptr;
  std::unique_ptr<Admission> admission_;

  std::mutex shutdown_mu_;
  std::condition_variable done_cv_;
  bool down_ = false;
};

Router::Router(RouterOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Router::~Router() = default;
absl::Status Router::Start() { return impl_->Start(); }
int Router::http_port() const { return impl_->http_port(); }
int Router::grpc_port() const { return impl_->grpc_port(); }
const std::string& Router::model_id() const { return impl_->model_id(); }
void Router::Shutdown() { impl_->Shutdown(); }
void Router::Wait() { impl_->Wait(); }

}  // namespace pipeinfer::router
