#include "router/sse_stream.h"

#include <httplib.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "router/http_reply.h"
#include "router/request_report.h"

namespace pipeinfer::router {
namespace {

using json = nlohmann::json;

// One streamed request, shared by the handler, the generation thread and the content provider.
struct StreamRun {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string> events;  // complete "data: ...\n\n" events
  bool done = false;               // the generation returned
  std::optional<Error> error;
  GenResult result;
  bool completed = false;  // the client got every event up to [DONE]
  std::shared_ptr<ClientLink> link;
  std::thread worker;
};

}  // namespace

void ServeStream(Core& core, httplib::Response& res, const std::string& endpoint,
                 std::shared_ptr<GenRequest> g, std::shared_ptr<Admission::Slot> slot,
                 std::shared_ptr<ClientLink> link, const AnswerHeader& header) {
  auto run = std::make_shared<StreamRun>();
  run->link = std::move(link);
  run->worker = std::thread([&core, g, run, slot, header]() mutable {
    GenSink gs;
    gs.on_delta = [&](const std::string& t, const std::vector<uint32_t>&, uint32_t) {
      if (run->link->gone) return false;
      if (t.empty()) return true;
      {
        std::lock_guard<std::mutex> l(run->mu);
        run->events.push_back(
            SseEvent(ChunkBody(header, header.chat ? json{{"content", t}} : json(t), nullptr)));
      }
      run->cv.notify_all();
      return true;
    };
    gs.cancelled = [&] { return run->link->gone.load(); };
    GenResult r;
    bool started = false;
    std::optional<Error> e = core.generator->Generate(*g, run->link->call, gs, &r, &started);
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
      SendError(core, res, endpoint, e, g.get());
      return;
    }
  }
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Request-Id", g->request_id);
  res.set_chunked_content_provider(
      "text/event-stream",
      [run, header](size_t, httplib::DataSink& sink) {
        auto send = [&](const std::string& ev) {
          if (sink.is_writable() && sink.write(ev.data(), ev.size())) return true;
          run->link->Gone();
          return false;
        };
        bool ok = true;
        if (header.chat) {
          ok = send(
              SseEvent(ChunkBody(header, json{{"role", "assistant"}, {"content", ""}}, nullptr)));
        }
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
          // CANCELLED: the client went away (the watcher noticed it first); nothing to tell it.
          const bool gone = run->error && run->error->code == absl::StatusCode::kCancelled;
          if (run->error) {
            if (!gone) ok = send(SseEvent(ErrorBody(*run->error)));
          } else {
            ok = send(SseEvent(LastChunkBody(header, run->result)));
          }
          ok = send("data: [DONE]\n\n") && ok && !gone;
          run->completed = ok;
        }
        sink.done();
        return true;
      },
      [&core, run, endpoint, g](bool) {
        // The response is finished or abandoned: stop the generation and reap its thread.
        run->link->Gone();
        if (run->worker.joinable()) run->worker.join();
        RequestEnd end;
        end.endpoint = endpoint;
        end.code = run->completed ? 200 : 499;
        // An error after the first event was sent in-band; it counts as a 200 that failed.
        if (run->completed && run->error) end.code = HttpStatusFor(*run->error);
        end.aborted = !run->completed;
        end.result = run->completed && !run->error ? &run->result : nullptr;
        ReportRequest(*core.metrics, *g, end);
      });
}

}  // namespace pipeinfer::router
