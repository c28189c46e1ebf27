#include "router/trace_stream.h"

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "pipeinfer/v1/draft.grpc.pb.h"
#include "router/client_link.h"
#include "router/draft_pool.h"

namespace pipeinfer::router {
namespace {

using json = nlohmann::json;

const char* OutcomeName(v1::TraceOutcome o) {
  switch (o) {
    case v1::TRACE_OUTCOME_COMPUTED:
      return "computed";
    case v1::TRACE_OUTCOME_SKIPPED:
      return "skipped";
    case v1::TRACE_OUTCOME_STOPPED:
      return "stopped";
    case v1::TRACE_OUTCOME_CANCELLED:
      return "cancelled";
    default:
      return "unknown";
  }
}

std::string EventJson(const v1::TraceEvent& e, const std::string& replica) {
  json j;
  if (e.run_id() == 0) {
    j = {{"type", "request"},        {"request_id", e.request_id()},    {"replica", replica},
         {"status", e.status()},     {"tokens", e.completion_tokens()}, {"drafted", e.drafted()},
         {"accepted", e.accepted()}, {"done_us", e.done_us()}};
  } else {
    json spans = json::array();
    for (const v1::TraceSpan& s : e.spans()) {
      json sj = {{"stage", s.stage()},
                 {"start_us", s.start_us()},
                 {"end_us", s.end_us()},
                 {"batch_runs", s.batch_runs()}};
      if (s.stopped()) sj["stopped"] = true;
      spans.push_back(std::move(sj));
    }
    j = {{"type", "run"},
         {"request_id", e.request_id()},
         {"replica", replica},
         {"session", e.session_id()},
         {"run", e.run_id()},
         {"kind", e.speculative() ? "speculative" : "plain"},
         {"tokens", e.tokens()},
         {"sent_us", e.sent_us()},
         {"done_us", e.done_us()},
         {"outcome", OutcomeName(e.outcome())},
         {"accepted", e.accepted()},
         {"drafted", e.drafted()},
         {"spans", std::move(spans)}};
    if (e.has_outcome_stage()) j["outcome_stage"] = e.outcome_stage();
  }
  if (e.dropped() > 0) j["dropped"] = e.dropped();
  return "data: " + j.dump() + "\n\n";
}

// One open trace stream: a reader thread per replica (Draft.Trace) feeding one queue.
struct TraceRelay {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string> events;
  bool stop = false;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::thread> readers;

  ~TraceRelay() {
    {
      std::lock_guard<std::mutex> l(mu);
      stop = true;
      for (auto& c : contexts) c->TryCancel();
    }
    cv.notify_all();
    for (auto& t : readers) t.join();
  }
};

// One Draft.Trace call per replica, for the stream's lifetime; a replica that is down or goes
// away ends its reader (the viewer reconnects to see it again).
void StartReaders(Core& core, const std::string& request_id, TraceRelay* relay) {
  for (const auto& replica : core.drafts->replicas()) {
    relay->contexts.push_back(std::make_unique<grpc::ClientContext>());
    grpc::ClientContext* ctx = relay->contexts.back().get();
    std::shared_ptr<grpc::Channel> channel = replica->channel;
    const std::string address = replica->address;
    relay->readers.emplace_back([relay, ctx, channel, address, request_id] {
      v1::TraceRequest req;
      req.set_request_id(request_id);
      std::unique_ptr<grpc::ClientReader<v1::TraceEvent>> reader =
          v1::Draft::NewStub(channel)->Trace(ctx, req);
      v1::TraceEvent ev;
      while (reader->Read(&ev)) {
        std::string line = EventJson(ev, address);
        {
          std::lock_guard<std::mutex> l(relay->mu);
          if (relay->events.size() < 8192) relay->events.push_back(std::move(line));
        }
        relay->cv.notify_all();
      }
      reader->Finish();
    });
  }
}

}  // namespace

void ServeTrace(Core& core, const httplib::Request& req, httplib::Response& res) {
  const std::string request_id = req.get_param_value("request_id");
  if (request_id.size() > 128) {
    res.status = 400;
    res.set_content(R"({"error":{"message":"request_id is longer than 128 characters",)"
                    R"("type":"invalid_request_error","param":"request_id","code":null}})",
                    "application/json");
    core.metrics->CountHttp("/v1/internal/trace", 400, "none");
    return;
  }
  auto relay = std::make_shared<TraceRelay>();
  StartReaders(core, request_id, relay.get());
  // A viewer that leaves is noticed within ~100 ms (its socket closes), not at the next write,
  // so that the draft services stop building events at once.
  std::shared_ptr<ClientLink> link = WatchClient(core, req);
  const json hello = {{"type", "hello"},
                      {"stages", core.n_stages},
                      {"replicas", core.drafts->size()},
                      {"request_id", request_id},
                      {"now_us", std::chrono::duration_cast<std::chrono::microseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count()}};
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [relay, link, first = std::make_shared<std::string>("data: " + hello.dump() + "\n\n")](
          size_t, httplib::DataSink& sink) {
        if (!first->empty()) {
          if (!sink.write(first->data(), first->size())) return false;
          first->clear();
        }
        std::unique_lock<std::mutex> l(relay->mu);
        // Up to 5 s for events (then a keep-alive comment), in steps that watch for the viewer
        // leaving.
        for (int step = 0; step < 25 && relay->events.empty(); ++step) {
          relay->cv.wait_for(l, std::chrono::milliseconds(200),
                             [&] { return !relay->events.empty(); });
          if (link->gone) return false;
        }
        std::string out;
        while (!relay->events.empty()) {
          out += relay->events.front();
          relay->events.pop_front();
        }
        l.unlock();
        if (out.empty()) out = ": ping\n\n";
        return sink.is_writable() && sink.write(out.data(), out.size());
      },
      [&core, relay](bool) { core.metrics->CountHttp("/v1/internal/trace", 200, "none"); });
}

}  // namespace pipeinfer::router
