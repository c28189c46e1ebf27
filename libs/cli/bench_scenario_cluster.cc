#include "cli/bench_scenario_cluster.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "cluster/supervisor.h"

namespace pipeinfer::cli {
namespace {

namespace fs = std::filesystem;

volatile sig_atomic_t g_signal = 0;
std::atomic<pid_t> g_child{0};  // the `up` or `down` running now
std::mutex g_mu;
std::string g_state;  // the state file of the cluster that is up (or coming up)
std::string g_log;

void OnSignal(int sig) { g_signal = sig; }

bool PortFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// The first of `n` consecutive free loopback ports.
int FreePorts(int n) {
  static std::mt19937 rng(
      static_cast<unsigned>(getpid()) ^
      static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::uniform_int_distribution<int> dist(20000, 60000 - n);
  for (int attempt = 0; attempt < 200; ++attempt) {
    const int base = dist(rng);
    bool ok = true;
    for (int i = 0; i < n && ok; ++i) ok = PortFree(base + i);
    if (ok) return base;
  }
  return dist(rng);  // unlikely; `up` will then report the port in use
}

// What went wrong according to a log: its first line that says "error" (CLI11's parse errors
// included), else its last non-empty line.
std::string ErrorLine(const std::string& path) {
  std::ifstream f(path);
  std::string last;
  for (std::string line; std::getline(f, line);) {
    if (line.find("error") != std::string::npos || line.find("not expected") != std::string::npos)
      return line;
    if (line.find_first_not_of(" \t\r") != std::string::npos) last = line;
  }
  return last;
}

void Watch() {
  while (g_signal == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const int sig = g_signal;
  std::fprintf(stderr, "\nsignal %d: stopping the scenario's cluster\n", sig);
  if (const pid_t up = g_child.load(); up > 0) {
    kill(up, SIGTERM);  // a starting `up` stops what it started
    for (int i = 0; i < 600 && g_child.load() == up; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  std::string state, log;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    state = g_state;
    log = g_log;
  }
  std::error_code ec;
  if (!state.empty() && fs::exists(state, ec)) {
    (void)RunSelf({"down", "--state", state, "--grace-ms", "3000"}, log);
  }
  std::fflush(stderr);
  _exit(128 + sig);
}

}  // namespace

absl::StatusOr<int> RunSelf(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> all = {"pipeinfer"};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError("cannot open " + log);
  const pid_t pid = fork();
  if (pid < 0) {
    close(fd);
    return absl::InternalError("fork failed");
  }
  if (pid == 0) {
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    const int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  close(fd);
  g_child.store(pid);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  g_child.store(0);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

void InstallScenarioSignalGuard() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa = {};
    sa.sa_handler = OnSignal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGHUP, &sa, nullptr);
    std::thread(Watch).detach();
  });
}

void WaitIfInterrupted() {
  while (g_signal != 0) std::this_thread::sleep_for(std::chrono::seconds(1));
}

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Up(
    const std::vector<std::string>& up_args, int stages, const std::string& state,
    const std::string& log_dir) {
  std::unique_ptr<LocalCluster> c(new LocalCluster());
  c->state_ = state;
  c->log_dir_ = log_dir;
  std::error_code ec;
  fs::create_directories(log_dir, ec);
  const std::string log = log_dir + "/up.log";
  {
    std::lock_guard<std::mutex> lock(g_mu);
    g_state = state;
    g_log = log;
  }
  c->up_ = true;  // from here on the destructor runs `down` (a no-op without a state file)
  int rc = -1;
  for (int attempt = 0; attempt < 3 && rc != 0; ++attempt) {
    // Stages, the draft service and the router's gRPC port, then its HTTP port.
    const int base = FreePorts(stages + 3);
    std::vector<std::string> args = {"up",
                                     "--detach",
                                     "--state",
                                     state,
                                     "--log-dir",
                                     log_dir,
                                     "--base-port",
                                     absl::StrCat(base),
                                     "--http-port",
                                     absl::StrCat(base + stages + 2),
                                     "--metrics-base-port",
                                     "-1"};
    args.insert(args.end(), up_args.begin(), up_args.end());
    absl::StatusOr<int> r = RunSelf(args, log);
    if (!r.ok()) return r.status();
    rc = *r;
    if (g_signal) break;
  }
  if (rc != 0) {
    return absl::UnavailableError(absl::StrCat("`pipeinfer up` failed (exit status ", rc,
                                               "): ", ErrorLine(log), "; see ", log));
  }
  absl::StatusOr<cluster::ClusterState> st = cluster::ReadState(state);
  if (!st.ok()) return st.status();
  c->router_ = st->endpoints.router_grpc;
  c->draft_ = st->endpoints.draft;
  if (c->router_.empty()) return absl::InternalError("the cluster has no router (" + state + ")");
  return c;
}

absl::Status LocalCluster::Down() {
  if (!up_) return absl::OkStatus();
  up_ = false;
  absl::Status result;
  std::error_code ec;
  if (fs::exists(state_, ec)) {
    absl::StatusOr<int> rc = RunSelf({"down", "--state", state_}, log_dir_ + "/down.log");
    if (!rc.ok()) {
      result = rc.status();
    } else if (*rc != 0) {
      result = absl::InternalError(absl::StrCat("`pipeinfer down --state ", state_,
                                                "` failed; see ", log_dir_, "/down.log"));
    }
  }
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_state == state_) g_state.clear();
  return result;
}

LocalCluster::~LocalCluster() {
  if (absl::Status s = Down(); !s.ok()) std::fprintf(stderr, "error: %s\n", s.message().data());
}

}  // namespace pipeinfer::cli
