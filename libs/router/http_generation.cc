#include "router/http_generation.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "log/build_info.h"
#include "router/client_link.h"
#include "router/http_limits.h"
#include "router/http_reply.h"
#include "router/openai_logprobs.h"
#include "router/openai_request.h"
#include "router/openai_response.h"
#include "router/request_report.h"
#include "router/sse_stream.h"

namespace pipeinfer::router {
namespace {

// The whole answer in one JSON object.
void ServeWhole(Core& core, httplib::Response& res, const std::string& endpoint, GenRequest& g,
                std::shared_ptr<Admission::Slot> slot, ClientLink& link,
                const AnswerHeader& header) {
  std::string text;
  LogprobsRenderer renderer(*core.model.tok, header.chat);
  std::vector<uint32_t> ids;
  std::vector<TokenLogprobs> lps;
  GenSink sink;
  sink.on_delta = [&](const std::string& t, const std::vector<uint32_t>& delta_ids, uint32_t,
                      const std::vector<TokenLogprobs>& delta_lps) {
    text += t;
    if (header.logprobs) {
      ids.insert(ids.end(), delta_ids.begin(), delta_ids.end());
      lps.insert(lps.end(), delta_lps.begin(), delta_lps.end());
    }
    return true;
  };
  // Nothing is written before the end, so only the watcher can tell that the client left.
  sink.cancelled = [&] { return link.gone.load(); };
  GenResult r;
  bool started = false;
  std::optional<Error> err = core.generator->Generate(g, link.call, sink, &r, &started);
  slot.reset();
  if (err) {
    SendError(core, res, endpoint, *err, &g);
    return;
  }
  res.status = 200;
  res.set_header("X-Request-Id", g.request_id);
  const nlohmann::json logprobs = header.logprobs ? renderer.Render(ids, lps) : nlohmann::json();
  res.set_content(Dump(CompletionBody(header, text, r, logprobs)), "application/json");
  RequestEnd end;
  end.endpoint = endpoint;
  end.code = 200;
  end.result = &r;
  ReportRequest(*core.metrics, g, end);
}

}  // namespace

void ServeGeneration(Core& core, const httplib::Request& req, httplib::Response& res,
                     const httplib::ContentReader& reader, bool chat) {
  const std::string endpoint = chat ? "/v1/chat/completions" : "/v1/completions";
  auto g = std::make_shared<GenRequest>();
  g->client = req.remote_addr;
  std::string body;
  if (auto e = ReadBody(req, res, reader, core.options.max_body_bytes, &body)) {
    SendError(core, res, endpoint, *e, g.get());
    return;
  }
  HttpOptions options;
  if (auto e = ParseOpenAiRequest(body, chat, *core.requests, g.get(), &options)) {
    SendError(core, res, endpoint, *e, g.get());
    return;
  }
  // A client's own id (X-Request-Id, printable and short) replaces the generated one.
  const std::string client_id = req.get_header_value("X-Request-Id");
  if (!client_id.empty() && client_id.size() <= 128 &&
      std::all_of(client_id.begin(), client_id.end(),
                  [](char c) { return c > 0x20 && c < 0x7f; })) {
    g->request_id = client_id;
  }
  g->mode = ModeLabel(g->spec, core.default_mode);
  body.clear();
  body.shrink_to_fit();
  auto link = WatchClient(core, req);
  const auto queued_at = std::chrono::steady_clock::now();
  bool gave_up = false;
  auto slot = core.admission->Acquire([&link] { return link->gone.load(); }, &gave_up);
  if (!slot) {
    SendError(core, res, endpoint,
              gave_up ? ClientGone()
                      : Error{absl::StatusCode::kResourceExhausted,
                              "Too many requests: the router's queue is full. Retry later.", "",
                              "rate_limit_exceeded"},
              g.get());
    return;
  }
  Admitted(*core.metrics, g.get(), queued_at);
  AnswerHeader header;
  header.chat = chat;
  header.id = g->request_id;
  header.created = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  header.model = core.model.id;
  static const std::string fingerprint = log::SystemFingerprint();
  header.fingerprint = fingerprint;
  header.logprobs = g->logprobs.has_value();
  header.include_usage = options.include_usage;
  if (options.stream) {
    ServeStream(core, res, endpoint, std::move(g), std::move(slot), std::move(link), header);
  } else {
    ServeWhole(core, res, endpoint, *g, std::move(slot), *link, header);
  }
}

}  // namespace pipeinfer::router
