#include "router/http_generation.h"

#include <httplib.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "router/client_link.h"
#include "router/http_limits.h"
#include "router/http_reply.h"
#include "router/openai_request.h"
#include "router/openai_response.h"
#include "router/sse_stream.h"

namespace pipeinfer::router {
namespace {

// The whole answer in one JSON object.
void ServeWhole(Core& core, httplib::Response& res, const std::string& endpoint, GenRequest& g,
                std::shared_ptr<Admission::Slot> slot, ClientLink& link,
                const AnswerHeader& header) {
  std::string text;
  GenSink sink;
  sink.on_delta = [&](const std::string& t, const std::vector<uint32_t>&, uint32_t) {
    text += t;
    return true;
  };
  // Nothing is written before the end, so only the watcher can tell that the client left.
  sink.cancelled = [&] { return link.gone.load(); };
  GenResult r;
  bool started = false;
  std::optional<Error> err = core.generator->Generate(g, &link.ctx, sink, &r, &started);
  slot.reset();
  if (err) {
    SendError(core, res, endpoint, *err);
    return;
  }
  res.status = 200;
  res.set_content(Dump(CompletionBody(header, text, r)), "application/json");
  core.metrics->CountRequest(endpoint, 200);
}

}  // namespace

void ServeGeneration(Core& core, const httplib::Request& req, httplib::Response& res,
                     const httplib::ContentReader& reader, bool chat) {
  const std::string endpoint = chat ? "/v1/chat/completions" : "/v1/completions";
  std::string body;
  if (auto e = ReadBody(req, res, reader, core.options.max_body_bytes, &body)) {
    SendError(core, res, endpoint, *e);
    return;
  }
  auto g = std::make_shared<GenRequest>();
  bool stream = false;
  if (auto e = ParseOpenAiRequest(body, chat, *core.requests, g.get(), &stream)) {
    SendError(core, res, endpoint, *e);
    return;
  }
  body.clear();
  body.shrink_to_fit();
  auto link = WatchClient(core, req);
  bool gave_up = false;
  auto slot = core.admission->Acquire([&link] { return link->gone.load(); }, &gave_up);
  if (!slot) {
    SendError(core, res, endpoint,
              gave_up ? ClientGone()
                      : Error{absl::StatusCode::kResourceExhausted,
                              "Too many requests: the router's queue is full. Retry later.", "",
                              "rate_limit_exceeded"});
    return;
  }
  core.metrics->prompt_tokens().Increment(static_cast<double>(g->prompt.size()));
  AnswerHeader header;
  header.chat = chat;
  header.id = g->request_id;
  header.created = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  header.model = core.model.id;
  if (stream) {
    ServeStream(core, res, endpoint, std::move(g), std::move(slot), std::move(link), header);
  } else {
    ServeWhole(core, res, endpoint, *g, std::move(slot), *link, header);
  }
}

}  // namespace pipeinfer::router
