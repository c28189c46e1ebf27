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
#include "router/openai_logprobs.h"
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
    // Tokens whose text is held back (a partial character, a possible stop sequence) keep their
    // log-probabilities until the chunk that carries their text.
    LogprobsRenderer renderer(*core.model.tok, header.chat);
    std::vector<uint32_t> held_ids;
    std::vector<TokenLogprobs> held_lps;
    auto push = [&](const std::string& t) {
      json logprobs;
      if (header.logprobs) {
        logprobs = renderer.Render(held_ids, held_lps);
        held_ids.clear();
        held_lps.clear();
      }
      {
        std::lock_guard<std::mutex> l(run->mu);
        run->events.push_back(SseEvent(
            ChunkBody(header, header.chat ? json{{"content", t}} : json(t), nullptr, logprobs)));
      }
      run->cv.notify_all();
    };
    gs.on_delta = [&](const std::string& t, const std::vector<uint32_t>& ids, uint32_t,
                      const std::vector<TokenLogprobs>& lps) {
      if (run->link->gone) return false;
      if (header.logprobs) {
        held_ids.insert(held_ids.end(), ids.begin(), ids.end());
        held_lps.insert(held_lps.end(), lps.begin(), lps.end());
      }
      if (t.empty()) return true;
      push(t);
      return true;
    };
    gs.cancelled = [&] { return run->link->gone.load(); };
    GenResult r;
    bool started = false;
    std::optional<Error> e = core.generator->Generate(*g, run->link->call, gs, &r, &started);
    slot.reset();
    // Tokens that produced no text at all (e.g. a stop token) still get their log-probabilities.
    if (!e && !held_ids.empty()) push("");
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
          ok = send(SseEvent(
              ChunkBody(header, json{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr)));
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
            if (ok && header.include_usage)
              ok = send(SseEvent(UsageChunkBody(header, run->result)));
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
