// The live trace stream (GET /v1/internal/trace) of a real 2-stage pipeinfer cluster
// (`pipeinfer up --detach` with the bundled demo pair, emulated 20 ms passes):
//   * without a viewer the draft service builds no events (pipeinfer_draft_trace_events_total);
//   * a viewer of one request gets "hello" first, then that request's runs only, in outcome order
//     (run ids increasing), each computed run with a span on every stage in pipeline order inside
//     [sent, done], and the request's end last with its token count;
//   * once the viewer leaves, events stop again.
#include <httplib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cluster/supervisor.h"
#include "testing/cluster_harness.h"
#include "testing/detached_cluster_test.h"
#include "testing/fixtures.h"

namespace pipeinfer {
namespace {

using json = nlohmann::json;
using pipeinfer::testing::BinPath;
using pipeinfer::testing::CommandResult;
using pipeinfer::testing::RunCmd;

const std::string kModels = PIPEINFER_MODELS_DIR;

// The value of the (only) sample of family `name` in Prometheus text, whatever its labels.
double Sample(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name + " ", 0) == 0 || line.rfind(name + "{", 0) == 0) {
      return std::stod(line.substr(line.rfind(' ') + 1));
    }
  }
  return -1;
}

// Reads an SSE stream on its own thread until Stop(); collects the JSON of every data line.
class TraceViewer {
 public:
  TraceViewer(int port, const std::string& path) : client_("127.0.0.1", port) {
    client_.set_read_timeout(30, 0);
    thread_ = std::thread([this, path] {
      client_.Get(path, [this](const char* data, size_t n) {
        std::lock_guard<std::mutex> l(mu_);
        buffer_.append(data, n);
        for (size_t end; (end = buffer_.find("\n\n")) != std::string::npos;) {
          const std::string event = buffer_.substr(0, end);
          buffer_.erase(0, end + 2);
          if (event.rfind("data: ", 0) == 0) events_.push_back(json::parse(event.substr(6)));
        }
        return !stop_;
      });
    });
  }
  ~TraceViewer() { Stop(); }

  void Stop() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    client_.stop();
    if (thread_.joinable()) thread_.join();
  }

  std::vector<json> Events() {
    std::lock_guard<std::mutex> l(mu_);
    return events_;
  }

  // Waits until an event satisfies `pred`.
  bool WaitFor(const std::function<bool(const json&)>& pred, std::chrono::seconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      for (const json& e : Events()) {
        if (pred(e)) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

 private:
  httplib::Client client_;
  std::thread thread_;
  std::mutex mu_;
  std::string buffer_;
  std::vector<json> events_;
  bool stop_ = false;
};

class TraceStreamTest : public testing::DetachedClusterTest {
 protected:
  TraceStreamTest() : DetachedClusterTest("trace_stream_test") {}

  void SetUp() override {
    DetachedClusterTest::SetUp();
    const CommandResult r =
        UpOnFreePorts({"--model", kModels + "/demo-target-q8_0.gguf", "--draft-model",
                       kModels + "/demo-draft-q8_0.gguf", "--mode", "pipeinfer", "--stages", "2",
                       "--kv-tokens", "4096", "--emulate-run-us", "20000"},
                      7);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    absl::StatusOr<cluster::ClusterState> st = cluster::ReadState(state_);
    ASSERT_TRUE(st.ok());
    draft_metrics_ = st->endpoints.draft_metrics;
  }

  int Chat(const std::string& request_id, int max_tokens) {
    httplib::Client c("127.0.0.1", http_port_);
    c.set_read_timeout(60, 0);
    auto r = c.Post("/v1/chat/completions", {{"X-Request-Id", request_id}},
                    json{{"messages", {{{"role", "user"}, {"content", "Tell me a story."}}}},
                         {"max_tokens", max_tokens},
                         {"temperature", 0}}
                        .dump(),
                    "application/json");
    return r ? r->status : 0;
  }

  double TraceEvents() {
    const size_t colon = draft_metrics_.rfind(':');
    httplib::Client c(draft_metrics_.substr(0, colon), std::stoi(draft_metrics_.substr(colon + 1)));
    auto r = c.Get("/metrics");
    return r ? Sample(r->body, "pipeinfer_draft_trace_events_total") : -1;
  }

  std::string draft_metrics_;
};

TEST_F(TraceStreamTest, EventsOnlyWhileSomeoneWatchesInOrderWithAlignedSpans) {
  // Nobody watches: no events are built.
  ASSERT_EQ(Chat("quiet-1", 16), 200);
  EXPECT_EQ(TraceEvents(), 0);

  const std::string id = "traced-" + std::to_string(getpid());
  TraceViewer viewer(http_port_, "/v1/internal/trace?request_id=" + id);
  ASSERT_TRUE(
      viewer.WaitFor([](const json& e) { return e["type"] == "hello"; }, std::chrono::seconds(10)));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the draft's Trace call is open
  ASSERT_EQ(Chat("other-" + id, 8), 200);                       // not this viewer's request
  ASSERT_EQ(Chat(id, 32), 200);
  ASSERT_TRUE(
      viewer.WaitFor([&](const json& e) { return e["type"] == "request" && e["request_id"] == id; },
                     std::chrono::seconds(20)));
  viewer.Stop();

  const std::vector<json> events = viewer.Events();
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.front()["type"], "hello");
  EXPECT_EQ(events.front()["stages"], 2);
  EXPECT_EQ(events.back()["type"], "request");
  EXPECT_EQ(events.back()["status"], "OK");
  EXPECT_EQ(events.back()["tokens"], 32);
  uint64_t last_run = 0;
  int computed = 0, speculative = 0;
  for (size_t i = 1; i + 1 < events.size(); ++i) {
    const json& e = events[i];
    ASSERT_EQ(e["type"], "run") << e.dump();
    EXPECT_EQ(e["request_id"], id) << e.dump();
    const uint64_t run = e["run"];
    EXPECT_GT(run, last_run) << "outcomes arrive in the order the runs were sent";
    last_run = run;
    if (e["kind"] == "speculative") ++speculative;
    const uint64_t sent = e["sent_us"], done = e["done_us"];
    EXPECT_LE(sent, done);
    if (e["outcome"] != "computed") continue;
    ++computed;
    ASSERT_EQ(e["spans"].size(), 2u) << e.dump();
    uint64_t prev_end = sent;
    for (size_t s = 0; s < 2; ++s) {
      const json& span = e["spans"][s];
      EXPECT_EQ(span["stage"], s);
      const uint64_t start = span["start_us"], end = span["end_us"];
      EXPECT_GE(start, prev_end) << e.dump();
      EXPECT_GE(end, start);
      // Each emulated pass takes at least 20 ms.
      EXPECT_GE(end - start, 19000u) << e.dump();
      EXPECT_LE(end, done);
      prev_end = end;
    }
  }
  EXPECT_GT(computed, 0);
  EXPECT_GT(speculative, 0);

  // The viewer left: the draft service stops building events (its Trace call notices the
  // cancellation within a fraction of a second).
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  const double before = TraceEvents();
  EXPECT_GT(before, 0);
  ASSERT_EQ(Chat("quiet-2", 16), 200);
  EXPECT_EQ(TraceEvents(), before);
}

TEST_F(TraceStreamTest, BadRequestIdIsRefused) {
  httplib::Client c("127.0.0.1", http_port_);
  auto r = c.Get("/v1/internal/trace?request_id=" + std::string(200, 'x'));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("request_id"), std::string::npos) << r->body;
}

}  // namespace
}  // namespace pipeinfer
