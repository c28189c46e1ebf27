#include "router/grpc_service.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "pipeinfer/v1/draft.grpc.pb.h"
#include "pipeinfer/v1/router.grpc.pb.h"
#include "router/draft_call.h"
#include "router/draft_pool.h"
#include "router/request_report.h"

namespace pipeinfer::router {
namespace {

using Clock = std::chrono::steady_clock;

grpc::Status ToGrpc(const Error& e) {
  return grpc::Status(static_cast<grpc::StatusCode>(e.code), e.message);
}

class RouterService final : public v1::Router::Service {
 public:
  explicit RouterService(Core& core) : core_(core), b_(*core.requests) {}

  grpc::Status Chat(grpc::ServerContext* ctx, const v1::ChatRequest* req,
                    grpc::ServerWriter<v1::GenerateEvent>* writer) override {
    if (grpc::Status a = Authorize(*ctx, "Chat"); !a.ok()) return a;
    const auto t0 = Clock::now();
    GenRequest g;
    g.arrival = t0;
    g.client = ctx->peer();
    std::optional<Error> err = b_.CheckModel(req->model());
    if (!err) {
      std::vector<chat::ChatMessage> msgs;
      for (const auto& m : req->messages()) msgs.push_back({m.role(), m.content()});
      err = b_.BuildChat(msgs, req->chat_template(), &g);
    }
    if (!err) err = b_.FromOptions(req->options(), &g);
    if (!err) err = b_.SetRequestId(req->request_id(), &g);
    return Serve("Chat", ctx, t0, err, &g, writer);
  }

  grpc::Status Complete(grpc::ServerContext* ctx, const v1::CompletionRequest* req,
                        grpc::ServerWriter<v1::GenerateEvent>* writer) override {
    if (grpc::Status a = Authorize(*ctx, "Complete"); !a.ok()) return a;
    const auto t0 = Clock::now();
    GenRequest g;
    g.arrival = t0;
    g.client = ctx->peer();
    std::optional<Error> err = b_.CheckModel(req->model());
    if (!err) err = Prompt(*req, &g);
    if (!err) err = b_.FromOptions(req->options(), &g);
    if (!err) err = b_.SetRequestId(req->request_id(), &g);
    return Serve("Complete", ctx, t0, err, &g, writer);
  }

  grpc::Status ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* resp) override {
    if (grpc::Status a = Authorize(*ctx, "ListModels"); !a.ok()) return a;
    v1::ModelInfo* m = resp->add_models();
    m->set_id(core_.model.id);
    m->set_n_ctx(b_.n_ctx());
    m->set_n_vocab(static_cast<uint32_t>(core_.model.tok->n_vocab()));
    m->set_owned_by("pipeinfer");
    m->set_created(core_.model.created);
    m->set_replicas(static_cast<uint32_t>(core_.drafts->size()));
    core_.metrics->CountGrpc("ListModels", 0, "none");
    return grpc::Status::OK;
  }

  // The draft service asks stage 0 with include_pipeline, and each stage appends its downstream
  // neighbour's statistics (or an error entry for it), so its answer already lists every stage
  // in order.
  grpc::Status GetClusterStats(grpc::ServerContext* ctx, const v1::ClusterStatsRequest* req,
                               v1::ClusterStatsResponse* resp) override {
    if (grpc::Status a = Authorize(*ctx, "GetClusterStats"); !a.ok()) return a;
    auto* me = resp->add_services();
    core_.metrics->metrics()->FillServiceStats(me);
    me->set_address(core_.options.grpc_address);
    // Every pipeline replica in turn: its draft service, then its stages.
    for (const auto& replica : core_.drafts->replicas()) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      v1::StatsRequest sreq;
      sreq.set_include_pipeline(req->include_stages());
      v1::StatsResponse sresp;
      const grpc::Status st = v1::Draft::NewStub(replica->channel)->GetStats(&ctx, sreq, &sresp);
      if (st.ok()) {
        for (auto& s : *sresp.mutable_services()) *resp->add_services() = std::move(s);
      } else {
        auto* d = resp->add_services();
        d->set_service("draft");
        d->set_address(replica->address);
        d->mutable_error()->set_code(static_cast<v1::StatusCode>(st.error_code()));
        d->mutable_error()->set_message(st.error_message());
      }
    }
    core_.metrics->CountGrpc("GetClusterStats", 0, "none");
    resp->set_collected_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    std::chrono::system_clock::now().time_since_epoch())
                                    .count());
    return grpc::Status::OK;
  }

 private:
  // API keys (api_keys.h): the `authorization` metadata, "Bearer <key>". A refusal is counted
  // and logged without the key.
  grpc::Status Authorize(const grpc::ServerContext& ctx, const char* method) {
    if (!core_.api_keys.enabled()) return grpc::Status::OK;
    std::string value;
    const auto& md = ctx.client_metadata();
    if (auto it = md.find("authorization"); it != md.end()) {
      value.assign(it->second.data(), it->second.size());
    }
    const absl::Status st = core_.api_keys.Check(value);
    if (st.ok()) return grpc::Status::OK;
    spdlog::warn("gRPC {} from {} refused: {}", method, ctx.peer(), S(st.message()));
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, S(st.message()));
  }

  // CompletionRequest: token ids (with an optional BOS) or text.
  std::optional<Error> Prompt(const v1::CompletionRequest& req, GenRequest* g) const {
    const tokenizer::Tokenizer& tok = *core_.model.tok;
    if (req.has_token_ids()) {
      std::optional<Error> err;
      if (req.token_ids().ids_size() == 0) err = Invalid("token_ids must not be empty");
      const bool bos = req.has_add_bos() && req.add_bos();
      if (bos && tok.bos_id() >= 0) g->prompt.push_back(static_cast<uint32_t>(tok.bos_id()));
      for (uint32_t id : req.token_ids().ids()) {
        if (static_cast<int64_t>(id) >= tok.n_vocab()) {
          return Invalid(
              absl::StrCat("token id ", id, " is out of range (n_vocab ", tok.n_vocab(), ")"));
        }
        g->prompt.push_back(id);
      }
      return err;
    }
    if (req.has_text()) {
      const bool bos = req.has_add_bos() ? req.add_bos() : tok.add_bos();
      const bool special = req.has_parse_special() ? req.parse_special() : true;
      return b_.EncodePrompt(req.text(), bos, special, g);
    }
    return Invalid("exactly one of text or token_ids must be set", "prompt");
  }

  grpc::Status Serve(const std::string& endpoint, grpc::ServerContext* sctx, Clock::time_point t0,
                     std::optional<Error> err, GenRequest* g,
                     grpc::ServerWriter<v1::GenerateEvent>* writer) {
    if (!err) err = b_.CheckContext(g);
    g->mode = ModeLabel(g->spec, core_.default_mode);
    RequestEnd end;
    end.endpoint = endpoint;
    end.grpc = true;
    if (err) {
      end.code = static_cast<int>(err->code);
      ReportRequest(*core_.metrics, *g, end);
      return ToGrpc(*err);
    }
    const auto queued_at = Clock::now();
    bool gave_up = false;
    auto slot = core_.admission->Acquire([sctx] { return sctx->IsCancelled(); }, &gave_up);
    if (gave_up) {
      end.code = static_cast<int>(grpc::StatusCode::CANCELLED);
      end.aborted = true;
      ReportRequest(*core_.metrics, *g, end);
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    if (!slot) {
      end.code = static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED);
      ReportRequest(*core_.metrics, *g, end);
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "too many requests: the admission queue is full, retry later");
    }
    Admitted(*core_.metrics, g, queued_at);
    sctx->AddInitialMetadata("x-request-id", g->request_id);
    // Every attempt inherits the client's deadline and cancellation.
    DraftCall call(sctx);
    GenSink sink;
    sink.on_delta = [&](const std::string& text, const std::vector<uint32_t>& ids, uint32_t index,
                        const std::vector<TokenLogprobs>&) {
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
    err = core_.generator->Generate(*g, call, sink, &r, &started);
    if (err) {
      end.code = static_cast<int>(err->code);
      end.aborted = err->code == absl::StatusCode::kCancelled;
      ReportRequest(*core_.metrics, *g, end);
      if (started) {
        v1::GenerateEvent ev;
        auto* e = ev.mutable_error();
        e->set_code(static_cast<v1::StatusCode>(err->code));
        e->set_message(err->message);
        e->set_origin("router");
        e->set_request_id(g->request_id);
        writer->Write(ev);
      }
      return ToGrpc(*err);
    }
    v1::GenerateEvent ev;
    auto* f = ev.mutable_finished();
    f->set_finish_reason(r.finish);
    f->mutable_usage()->set_prompt_tokens(r.prompt_tokens);
    f->mutable_usage()->set_completion_tokens(r.completion_tokens);
    f->mutable_usage()->set_total_tokens(r.prompt_tokens + r.completion_tokens);
    *f->mutable_timings() = r.timings;
    f->set_model(core_.model.id);
    f->set_stop_sequence(r.stop_sequence);
    *f->mutable_spec() = r.spec;
    f->set_request_id(g->request_id);
    writer->Write(ev);
    end.code = 0;
    end.result = &r;
    ReportRequest(*core_.metrics, *g, end);
    return grpc::Status::OK;
  }

  Core& core_;
  const RequestBuilder& b_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeRouterService(Core& core) {
  return std::make_unique<RouterService>(core);
}

}  // namespace pipeinfer::router
