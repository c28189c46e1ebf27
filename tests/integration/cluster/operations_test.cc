// What an operator relies on, against real processes started by `pipeinfer up --detach`:
//   * ports are exclusive: a second cluster on taken ports fails at once, naming the port, and the
//     first keeps serving;
//   * SIGTERM drains the router: /ready turns 503 at once, a stream in progress completes, then the
//     router exits 0;
//   * JSON logs: every line of every process parses, and one request's id appears in the router's,
//     the draft service's and every stage's lines;
//   * pipeline replicas: two replicas behind one router share sequential requests, and with one
//     replica killed every new request is still served;
//   * detached supervision: a SIGKILLed stage is restarted by the supervisor `up --detach` leaves
//     behind, `pipeinfer status` reports it (restarts, exit reason, health), a chat works again,
//     and `down` leaves no process behind.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <httplib.h>

#include <chrono>
#include <fstream>
#include <map>
#include <set>
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
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::FreePortRange;
using pipeinfer::testing::ReadText;
using pipeinfer::testing::RunCmd;

// The sum of the samples of `family` whose label set contains every one of `labels`.
double Sum(const std::string& text, const std::string& family,
           const std::vector<std::string>& labels = {}) {
  double sum = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(family + "{", 0) != 0 && line.rfind(family + " ", 0) != 0) continue;
    const size_t sp = line.rfind(' ');
    const std::string set = line.substr(family.size(), sp - family.size());
    bool all = true;
    for (const std::string& l : labels) all = all && set.find(l) != std::string::npos;
    if (all) sum += std::stod(line.substr(sp + 1));
  }
  return sum;
}

class OperationsTest : public testing::DetachedClusterTest {
 protected:
  OperationsTest() : DetachedClusterTest("operations_test") {}

  // `pipeinfer up --detach` of the tiny model, plain mode, 2 stages per replica, on free ports.
  CommandResult Up(int replicas, const std::vector<std::string>& extra) {
    const int stages = 2;
    std::vector<std::string> args = {"--model",     FixturePath("models/tiny-f32.gguf"),
                                     "--stages",    std::to_string(stages),
                                     "--replicas",  std::to_string(replicas),
                                     "--kv-tokens", "2048"};
    args.insert(args.end(), extra.begin(), extra.end());
    return UpOnFreePorts(args, 2 * replicas * (stages + 1) + 1);
  }

  cluster::ClusterState State() {
    absl::StatusOr<cluster::ClusterState> s = cluster::ReadState(state_);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : cluster::ClusterState();
  }

  httplib::Client Http() {
    httplib::Client c("127.0.0.1", http_port_);
    c.set_read_timeout(60, 0);
    return c;
  }

  // One whole completion; the HTTP status (0 when the connection failed).
  int Complete(const std::string& request_id = "", int max_tokens = 4) {
    httplib::Headers h;
    if (!request_id.empty()) h.emplace("X-Request-Id", request_id);
    auto r = Http().Post("/v1/completions", h,
                         json{{"prompt", "Once upon"}, {"max_tokens", max_tokens}}.dump(),
                         "application/json");
    return r ? r->status : 0;
  }

  std::string Metrics() {
    auto r = Http().Get("/metrics");
    return r ? r->body : "";
  }
};

TEST_F(OperationsTest, SecondClusterOnTakenPortsFailsAndTheFirstKeepsServing) {
  const CommandResult first = Up(1, {});
  ASSERT_EQ(first.exit_code, 0) << first.output;
  ASSERT_EQ(Complete(), 200);
  const double served = Sum(Metrics(), "pipeinfer_router_http_requests_total",
                            {"endpoint=\"/v1/completions\"", "http_code=\"200\""});

  // The same ports again, through another state file.
  const CommandResult second =
      RunCmd({BinPath("pipeinfer"), "up", "--model", FixturePath("models/tiny-f32.gguf"),
              "--stages", "2", "--kv-tokens", "2048", "--base-port", std::to_string(base_port_),
              "--http-port", std::to_string(http_port_), "--detach", "--state",
              dir_ + "/second.json", "--log-dir", dir_ + "/logs2"},
             std::chrono::seconds(60));
  EXPECT_NE(second.exit_code, 0) << second.output;
  EXPECT_NE(second.output.find("port " + std::to_string(base_port_) + " "), std::string::npos)
      << second.output;
  EXPECT_NE(second.output.find("already in use"), std::string::npos) << second.output;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/second.json"));

  // Only the router's HTTP port taken (by the first cluster's router): still refused.
  const int other_base = FreePortRange(7);
  const CommandResult third =
      RunCmd({BinPath("pipeinfer"), "up", "--model", FixturePath("models/tiny-f32.gguf"),
              "--stages", "2", "--kv-tokens", "2048", "--base-port", std::to_string(other_base),
              "--http-port", std::to_string(http_port_), "--detach", "--state",
              dir_ + "/third.json", "--log-dir", dir_ + "/logs3"},
             std::chrono::seconds(60));
  EXPECT_NE(third.exit_code, 0) << third.output;
  EXPECT_NE(third.output.find("port " + std::to_string(http_port_) + " "), std::string::npos)
      << third.output;
  EXPECT_NE(third.output.find("router HTTP"), std::string::npos) << third.output;

  // The first cluster is undisturbed: every process alive, and its router still answers, counting
  // exactly the requests sent to it.
  for (const cluster::ProcessInfo& p : State().processes) {
    EXPECT_TRUE(cluster::ProcessAlive(p.pid, p.start_time)) << p.name;
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Complete(), 200);
  EXPECT_EQ(Sum(Metrics(), "pipeinfer_router_http_requests_total",
                {"endpoint=\"/v1/completions\"", "http_code=\"200\""}),
            served + 3);
}

TEST_F(OperationsTest, SigtermDrainsTheRouter) {
  // Every forward pass takes >= 20 ms, so 60 tokens over 2 stages stream for more than 2 s.
  const CommandResult up = Up(1, {"--emulate-run-us", "20000"});
  ASSERT_EQ(up.exit_code, 0) << up.output;
  const cluster::ClusterState state = State();
  pid_t router = -1;
  for (const auto& p : state.processes) {
    if (p.name == "router") router = p.pid;
  }
  ASSERT_GT(router, 0);
  ASSERT_EQ(Http().Get("/ready")->status, 200);

  std::string streamed;
  int stream_status = 0;
  std::thread client([&] {
    httplib::Client c("127.0.0.1", http_port_);
    c.set_read_timeout(60, 0);
    auto r = c.Post(
        "/v1/completions",
        json{{"prompt", "Once upon"}, {"max_tokens", 60}, {"temperature", 0}, {"stream", true}}
            .dump(),
        "application/json");
    if (r) {
      stream_status = r->status;
      streamed = r->body;
    }
  });
  // Wait until the request generates, then SIGTERM.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (Sum(Metrics(), "pipeinfer_num_requests_running") < 1 &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(Sum(Metrics(), "pipeinfer_num_requests_running"), 1);
  ASSERT_EQ(kill(router, SIGTERM), 0);
  // /ready turns 503 at once (within 0.5 s) while the stream goes on.
  int ready = 0;
  const auto t_term = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t_term < std::chrono::milliseconds(500)) {
    auto r = Http().Get("/ready");
    ready = r ? r->status : 0;
    if (ready == 503) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(ready, 503);
  EXPECT_TRUE(cluster::ProcessAlive(router, 0)) << "the router exited before its stream ended";
  client.join();
  EXPECT_EQ(stream_status, 200);
  // The stream completed: the final chunk with its finish reason (the tiny model may end with
  // EOS before max_tokens), and [DONE].
  EXPECT_TRUE(streamed.find("\"finish_reason\":\"length\"") != std::string::npos ||
              streamed.find("\"finish_reason\":\"stop\"") != std::string::npos)
      << streamed;
  EXPECT_NE(streamed.find("data: [DONE]"), std::string::npos) << streamed;
  EXPECT_EQ(streamed.find("\"error\""), std::string::npos) << streamed;
  // Then the router exits on its own, well before its 30 s drain limit.
  const auto t_end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (cluster::ProcessAlive(router, 0) && std::chrono::steady_clock::now() < t_end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_FALSE(cluster::ProcessAlive(router, 0));
  const std::string log = ReadText(dir_ + "/logs/router.log");
  EXPECT_NE(log.find("draining"), std::string::npos) << log;
  EXPECT_NE(log.find("drained"), std::string::npos) << log;
}

TEST_F(OperationsTest, JsonLogsCarryOneRequestIdThroughEveryProcess) {
  const CommandResult up = Up(1, {"--log-format", "json"});
  ASSERT_EQ(up.exit_code, 0) << up.output;
  const std::string id = "ops-test-" + std::to_string(getpid());
  ASSERT_EQ(Complete(id), 200);
  ASSERT_EQ(Complete(), 200);  // another request, whose lines must not carry the id
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the stages' close lines
  std::map<std::string, int> with_id;                           // service -> lines with the id
  for (const cluster::ProcessInfo& p : State().processes) {
    std::ifstream in(p.log);
    int lines = 0;
    for (std::string line; std::getline(in, line);) {
      ++lines;
      json j;
      ASSERT_NO_THROW(j = json::parse(line)) << p.log << ": " << line;
      ASSERT_TRUE(j.contains("ts") && j.contains("level") && j.contains("service") &&
                  j.contains("msg"))
          << line;
      if (j.value("request_id", "") == id) ++with_id[j["service"].get<std::string>()];
    }
    EXPECT_GT(lines, 0) << p.log;
  }
  EXPECT_EQ(with_id["router"], 1);  // the access-log line
  EXPECT_GE(with_id["draft"], 1);
  EXPECT_GE(with_id["stage0"], 2);  // session open and closed
  EXPECT_GE(with_id["stage1"], 2);
  // The access-log line has the request's facts.
  std::ifstream in(dir_ + "/logs/router.log");
  bool found = false;
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line);
    if (j.value("request_id", "") != id) continue;
    found = true;
    EXPECT_EQ(j["msg"], "request");
    EXPECT_EQ(j["status"], "200");
    EXPECT_EQ(j["endpoint"], "/v1/completions");
    EXPECT_EQ(j["completion_tokens"], 4);
    EXPECT_GT(j["prompt_tokens"].get<int>(), 0);
    EXPECT_GT(j["e2e_s"].get<double>(), 0);
    EXPECT_EQ(j["client"], "127.0.0.1");
  }
  EXPECT_TRUE(found);
}

TEST_F(OperationsTest, ReplicasShareTheLoadAndSurviveOneKilled) {
  // --no-restart: the killed replica must stay down (the supervisor would bring it back in 1 s).
  const CommandResult up = Up(2, {"--no-restart"});
  ASSERT_EQ(up.exit_code, 0) << up.output;
  const cluster::ClusterState state = State();
  ASSERT_EQ(state.endpoints.drafts.size(), 2u);
  for (int i = 0; i < 6; ++i) ASSERT_EQ(Complete(), 200);
  const std::string m = Metrics();
  for (const std::string& d : state.endpoints.drafts) {
    EXPECT_GE(Sum(m, "pipeinfer_router_replica_requests_total", {"replica=\"" + d + "\""}), 2)
        << d << "\n"
        << m;
    EXPECT_EQ(Sum(m, "pipeinfer_router_replica_healthy", {"replica=\"" + d + "\""}), 1) << d;
  }
  // Kill replica 1 (its stages and draft service) and send at once: the requests that find it
  // gone move to replica 0 before the health check has noticed.
  for (const cluster::ProcessInfo& p : state.processes) {
    if (p.name.rfind("replica 1 ", 0) == 0) kill(p.pid, SIGKILL);
  }
  for (int i = 0; i < 8; ++i) EXPECT_EQ(Complete(), 200) << "request " << i;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (Sum(Metrics(), "pipeinfer_router_replica_healthy",
             {"replica=\"" + state.endpoints.drafts[1] + "\""}) != 0 &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(Sum(Metrics(), "pipeinfer_router_replica_healthy",
                {"replica=\"" + state.endpoints.drafts[1] + "\""}),
            0);
  EXPECT_EQ(Http().Get("/ready")->status, 200);  // one replica still serves
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Complete(), 200);
}

// `pipeinfer status --state <state> --json`, parsed (null when the output is no JSON).
json Status(const std::string& state, int* exit_code) {
  const CommandResult r = RunCmd({BinPath("pipeinfer"), "status", "--state", state, "--json"},
                                 std::chrono::seconds(30));
  *exit_code = r.exit_code;
  json j = json::parse(r.output, nullptr, false);
  if (j.is_discarded()) ADD_FAILURE() << "status printed no JSON:\n" << r.output;
  return j.is_discarded() ? json() : j;
}

const json* Process(const json& status, const std::string& name) {
  if (!status.contains("processes")) return nullptr;
  for (const json& p : status["processes"]) {
    if (p.value("name", "") == name) return &p;
  }
  return nullptr;
}

TEST_F(OperationsTest, DetachedSupervisorRestartsAKilledStageAndDownLeavesNothing) {
  const CommandResult up = Up(1, {});
  ASSERT_EQ(up.exit_code, 0) << up.output;
  EXPECT_NE(up.output.find("supervised by pid"), std::string::npos) << up.output;
  const cluster::ClusterState before = State();
  const pid_t supervisor = before.supervisor.pid;
  ASSERT_GT(supervisor, 0);
  EXPECT_TRUE(cluster::ProcessAlive(supervisor, before.supervisor.start_time));
  ASSERT_EQ(before.processes.size(), 4u);  // 2 stages, the draft service, the router

  int rc = -1;
  json s = Status(state_, &rc);
  EXPECT_EQ(rc, 0) << s.dump(2);
  EXPECT_EQ(s.value("healthy", false), true) << s.dump(2);
  EXPECT_EQ(s["supervisor"].value("alive", false), true) << s.dump(2);
  for (const json& p : s["processes"]) {
    EXPECT_EQ(p.value("health", ""), "SERVING") << p.dump();
    EXPECT_EQ(p.value("restarts", -1), 0) << p.dump();
    EXPECT_TRUE(p.value("alive", false)) << p.dump();
  }
  const json* router = Process(s, "router");
  ASSERT_NE(router, nullptr);
  EXPECT_EQ(router->value("role", ""), "router");
  EXPECT_EQ(router->value("port", ""), std::to_string(base_port_ + 2 + 1));  // gRPC after draft

  pid_t victim = -1;
  for (const auto& p : before.processes) {
    if (p.name == "stage 1") victim = p.pid;
  }
  ASSERT_GT(victim, 0);
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  // Reaped by the supervisor at once, restarted after a 1 s backoff: seen in between, the cluster
  // is unhealthy (the stage is not running).
  const auto t_kill = std::chrono::steady_clock::now();
  while (cluster::ProcessAlive(victim, 0) &&
         std::chrono::steady_clock::now() - t_kill < std::chrono::seconds(5)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  s = Status(state_, &rc);
  if (const json* st1 = Process(s, "stage 1"); st1 && st1->value("restarts", -1) == 0) {
    EXPECT_EQ(rc, 1) << s.dump(2);
    EXPECT_FALSE(s.value("healthy", true)) << s.dump(2);
    EXPECT_FALSE(st1->value("alive", true)) << s.dump(2);
    EXPECT_EQ(st1->value("health", ""), "DOWN") << s.dump(2);
  }
  // Healthy again, with the restart recorded.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  const json* st1 = nullptr;
  while (std::chrono::steady_clock::now() < until) {
    s = Status(state_, &rc);
    st1 = Process(s, "stage 1");
    if (rc == 0 && st1 && st1->value("restarts", 0) == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_EQ(rc, 0) << s.dump(2) << ReadText(before.supervisor.log);
  ASSERT_NE(st1, nullptr);
  EXPECT_EQ(st1->value("restarts", 0), 1) << s.dump(2);
  EXPECT_EQ(st1->value("last_exit", ""), "was killed by signal 9") << s.dump(2);
  EXPECT_GT(st1->value("last_restart_unix", int64_t{0}), 0) << s.dump(2);
  EXPECT_NE(st1->value("pid", victim), victim) << s.dump(2);
  for (const json& p : s["processes"]) {
    if (p.value("name", "") != "stage 1") {
      EXPECT_EQ(p.value("restarts", -1), 0) << p.dump();
    }
  }
  const std::string sup_log = ReadText(before.supervisor.log);
  EXPECT_NE(sup_log.find("stage 1 (pid " + std::to_string(victim) + ") was killed by signal 9"),
            std::string::npos)
      << sup_log;
  EXPECT_NE(sup_log.find("restarted stage 1"), std::string::npos) << sup_log;

  // A chat through the router, which `chat` finds in the state file.
  const CommandResult chat = RunCmd({BinPath("pipeinfer"), "chat", "--state", state_,
                                     "--max-tokens", "4", "--temperature", "0", "Once upon"},
                                    std::chrono::seconds(60));
  EXPECT_EQ(chat.exit_code, 0) << chat.output;

  // `down`: the supervisor first (nothing is restarted behind it), then every process.
  std::vector<pid_t> pids = {supervisor};
  for (const auto& p : State().processes) pids.push_back(p.pid);
  const CommandResult down =
      RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
  EXPECT_EQ(down.exit_code, 0) << down.output;
  EXPECT_NE(down.output.find("stopped the supervisor (pid " + std::to_string(supervisor) + ")"),
            std::string::npos)
      << down.output;
  const auto gone_until = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  bool gone = false;
  while (!gone && std::chrono::steady_clock::now() < gone_until) {
    gone = true;
    for (pid_t p : pids) gone = gone && !cluster::ProcessAlive(p, 0);
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(gone) << down.output;
  EXPECT_FALSE(std::filesystem::exists(state_));
  int after = -1;
  const CommandResult none =
      RunCmd({BinPath("pipeinfer"), "status", "--state", state_}, std::chrono::seconds(30));
  after = none.exit_code;
  EXPECT_EQ(after, 2) << none.output;
}

}  // namespace
}  // namespace pipeinfer
