#include "cluster/supervisor.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <netdb.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cluster/health_probe.h"

namespace pipeinfer::cluster {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string Tail(const std::string& path, int max_lines) {
  std::ifstream f(path);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(f, line)) {
    lines.push_back(line);
    if (lines.size() > static_cast<size_t>(max_lines)) lines.erase(lines.begin());
  }
  std::string out;
  for (const auto& l : lines) out += "    " + l + "\n";
  return out;
}

// The port of HOST:PORT.
std::string PortOf(const std::string& address) { return address.substr(address.rfind(':') + 1); }

}  // namespace

std::string Supervisor::StageListen(int i, int r) const {
  if (options_.links.empty()) return config_.StageAddress(i, r);
  return "0.0.0.0:" + PortOf(config_.StageAddress(i, r));
}

std::string Supervisor::StageEndpoint(int i, int r) const {
  if (options_.links.empty()) return config_.StageAddress(i, r);
  return options_.links.StageManagementAddress(i) + ":" + PortOf(config_.StageAddress(i, r));
}

std::string Supervisor::StageMetricsListen(int i, int r) const {
  const std::string m = config_.StageMetricsAddress(i, r);
  if (m.empty() || options_.links.empty()) return m;
  return "0.0.0.0:" + PortOf(m);
}

std::string Supervisor::StageMetricsEndpoint(int i, int r) const {
  const std::string m = config_.StageMetricsAddress(i, r);
  if (m.empty() || options_.links.empty()) return m;
  return options_.links.StageManagementAddress(i) + ":" + PortOf(m);
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return "stopped";
}

std::string DefaultRuntimeDir() { return absl::StrCat("/tmp/pipeinfer-", getuid()); }

std::string SelfExeDir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return ".";
  return exe.parent_path().string();
}

uint64_t ProcessStartTime(pid_t pid) {
  if (pid <= 0) return 0;
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat;
  if (!std::getline(f, stat)) return 0;
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream in(stat.substr(paren + 1));
  // Fields after the command: 3 state, 4 ppid, ... 22 starttime.
  std::string state;
  in >> state;
  if (state == "Z" || state == "X") return 0;
  std::string field;
  for (int i = 4; i < 22; ++i) in >> field;
  uint64_t start = 0;
  in >> start;
  return start;
}

bool ProcessAlive(pid_t pid, uint64_t start_time) {
  const uint64_t t = ProcessStartTime(pid);
  if (t == 0) return false;
  return start_time == 0 || t == start_time;
}

Supervisor::Supervisor(ClusterConfig config, SupervisorOptions options)
    : config_(std::move(config)), options_(std::move(options)) {}

Supervisor::~Supervisor() { StopAll(); }

absl::StatusOr<ProcessInfo> Supervisor::Launch(const std::string& name, const std::string& address,
                                               const std::vector<std::string>& argv,
                                               const std::string& netns) const {
  std::string file = name;
  for (char& ch : file) {
    if (ch == ' ') ch = '-';
  }
  const std::string log = options_.log_dir + "/" + file + ".log";
  const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot open log file ", log));
  int ns_fd = -1;  // the child enters this network namespace before exec
  if (!netns.empty()) {
    const std::string ns_path = "/run/netns/" + netns;
    ns_fd = open(ns_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns_fd < 0) {
      close(fd);
      return absl::InternalError(absl::StrCat("cannot open network namespace ", ns_path));
    }
  }
  std::vector<char*> args;
  for (const auto& s : argv) args.push_back(const_cast<char*>(s.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const bool detach = options_.detach;
  const pid_t pid = fork();
  if (pid < 0) {
    close(fd);
    if (ns_fd >= 0) close(ns_fd);
    return absl::InternalError(absl::StrCat("fork failed for ", name));
  }
  if (pid == 0) {
    if (detach) {
      setsid();  // outlives us and gets no terminal signals
    } else {
      // Dies with the supervisor even if it is killed without a chance to clean up.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      setpgid(0, 0);  // Ctrl-C reaches the supervisor only; it stops the children in order
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);  // the detached supervisor ignores it
    const int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    dup2(fd, 1);
    dup2(fd, 2);
    if (ns_fd >= 0 && setns(ns_fd, CLONE_NEWNET) != 0) {
      dprintf(2, "cannot enter network namespace %s\n", netns.c_str());
      _exit(126);
    }
    execv(args[0], args.data());
    dprintf(2, "exec %s failed\n", args[0]);
    _exit(127);
  }
  close(fd);
  if (ns_fd >= 0) close(ns_fd);
  ProcessInfo p;
  p.name = name;
  p.pid = pid;
  p.start_time = ProcessStartTime(pid);
  p.address = address;
  p.log = log;
  return p;
}

absl::Status Supervisor::Spawn(const std::string& name, const std::string& address,
                               const std::vector<std::string>& argv, const std::string& netns) {
  absl::StatusOr<ProcessInfo> p = Launch(name, address, argv, netns);
  if (!p.ok()) return p.status();
  procs_.push_back(*p);
  reaped_.push_back(false);
  relaunch_.push_back(Relaunch{argv, netns, {}, Clock::now()});
  SaveState();
  std::printf("started %s (pid %d), log %s\n", name.c_str(), p->pid, p->log.c_str());
  std::fflush(stdout);
  return absl::OkStatus();
}

void Supervisor::SaveState() const {
  if (options_.state_path.empty()) return;
  if (absl::Status st = WriteState(State(), options_.state_path); !st.ok()) {
    std::fprintf(stderr, "warning: %s\n", std::string(st.message()).c_str());
  }
}

absl::Status Supervisor::WaitServing(const ProcessInfo& p, const volatile int* stop_requested,
                                     const std::string& http_address) {
  const auto end = Clock::now() + std::chrono::seconds(options_.health_timeout_s);
  const size_t index = &p - procs_.data();
  while (true) {
    if (stop_requested && *stop_requested) return absl::CancelledError("interrupted");
    int status = 0;
    if (waitpid(p.pid, &status, WNOHANG) == p.pid) {
      reaped_[index] = true;
      return absl::UnavailableError(
          absl::StrCat(p.name, " (pid ", p.pid, ") ", DescribeExit(status),
                       " before becoming SERVING; see its log ", p.log, ":\n", Tail(p.log, 15)));
    }
    if (GrpcHealth(p.address, config_.tls_dir) == Health::kServing) {
      std::string detail;
      if (http_address.empty() || RouterReady(http_address, config_.tls_dir, /*api_key=*/"",
                                              &detail) != Health::kUnreachable) {
        return absl::OkStatus();
      }
    }
    if (Clock::now() > end) {
      return absl::DeadlineExceededError(absl::StrCat(
          p.name, " (pid ", p.pid, ") did not become SERVING at ", p.address, " within ",
          options_.health_timeout_s, " s; see its log ", p.log, ":\n", Tail(p.log, 15)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

std::vector<std::string> Supervisor::StageArgv(int i, int r) const {
  const ClusterConfig& c = config_;
  std::vector<std::string> argv = {options_.bin_dir + "/pipeinfer-stage",
                                   "--model",
                                   c.model,
                                   "--listen",
                                   StageListen(i, r),
                                   "--stage",
                                   std::to_string(i),
                                   "--stages",
                                   std::to_string(c.stages),
                                   "--threads",
                                   std::to_string(c.threads)};
  // --device / --devices: every replica's stage i gets the same entry (config.h).
  const std::vector<std::string> device_args = StageDeviceArgs(c, i);
  argv.insert(argv.end(), device_args.begin(), device_args.end());
  if (i + 1 < c.stages) {
    std::string next = c.StageAddress(i + 1, r);
    if (!options_.links.empty()) {
      next = options_.links.StageDataAddress(i + 1) + ":" + PortOf(next);
    }
    argv.insert(argv.end(), {"--downstream", next});
  }
  if (c.emulate_link_us > 0) {
    argv.insert(argv.end(), {"--emulate-link-us", std::to_string(c.emulate_link_us)});
  }
  if (c.emulate_link_mbps > 0) {  // in-process pacing on top of tbf (docs/link-emulation.md)
    argv.insert(argv.end(), {"--emulate-link-mbps", absl::StrCat(c.emulate_link_mbps)});
  }
  const std::vector<std::string> kv_args = StageKvArgs(c);
  argv.insert(argv.end(), kv_args.begin(), kv_args.end());
  if (c.max_batch_tokens > 0) {
    argv.insert(argv.end(), {"--max-batch-tokens", std::to_string(c.max_batch_tokens)});
  }
  if (c.emulate_run_us > 0) {
    argv.insert(argv.end(), {"--emulate-run-us", std::to_string(c.emulate_run_us)});
  }
  if (c.emulate_token_us > 0) {
    argv.insert(argv.end(), {"--emulate-token-us", std::to_string(c.emulate_token_us)});
  }
  if (!c.weights.empty()) {
    std::vector<std::string> w;
    for (double x : c.weights) w.push_back(absl::StrCat(x));
    argv.insert(argv.end(), {"--weights", absl::StrJoin(w, ",")});
  }
  if (!c.model_id.empty()) argv.insert(argv.end(), {"--model-id", c.model_id});
  if (const std::string m = StageMetricsListen(i, r); !m.empty()) {
    argv.insert(argv.end(), {"--metrics-listen", m});
  }
  const std::vector<std::string> tls_args = StageTlsArgs(c, i);  // + its allow-list
  argv.insert(argv.end(), tls_args.begin(), tls_args.end());
  const std::vector<std::string> log_args = LogArgs(c);
  argv.insert(argv.end(), log_args.begin(), log_args.end());
  return argv;
}

absl::Status Supervisor::Start(const volatile int* stop_requested) {
  const ClusterConfig& c = config_;
  const std::string stage_bin = options_.bin_dir + "/pipeinfer-stage";
  const std::string draft_bin = options_.bin_dir + "/pipeinfer-draft";
  const std::string router_bin = options_.bin_dir + "/pipeinfer-router";
  for (const auto& [bin, needed] : {std::pair{stage_bin, true}, std::pair{draft_bin, true},
                                    std::pair{router_bin, options_.router}}) {
    if (needed && access(bin.c_str(), X_OK) != 0) {
      return absl::NotFoundError(
          absl::StrCat(bin, " not found or not executable",
                       bin == router_bin ? " (build pipeinfer-router, or pass --no-router)" : ""));
    }
  }
  std::error_code ec;
  fs::create_directories(options_.log_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create log dir ", options_.log_dir));

  auto fail = [&](absl::Status st) {
    StopAll();
    return st;
  };
  if (!options_.links.empty() && c.replicas > 1) {
    return absl::InvalidArgumentError("link emulation runs one pipeline replica only");
  }
  // Every port must be free: a server binds its ports exclusively and exits when one is taken,
  // but the health check would find whatever else serves there (another cluster) and take it.
  if (auto st = CheckPortsFree(c, !options_.links.empty()); !st.ok()) return st;
  for (int r = 0; r < c.replicas; ++r) {
    const std::string who = c.replicas > 1 ? absl::StrCat("replica ", r, " ") : "";
    // The last stage first: a stage reports SERVING only once its downstream link is up.
    for (int i = c.stages - 1; i >= 0; --i) {
      const std::vector<std::string> argv = StageArgv(i, r);
      const std::string netns = options_.links.empty() ? "" : options_.links.namespaces[i];
      if (auto st = Spawn(absl::StrCat(who, "stage ", i), StageEndpoint(i, r), argv, netns);
          !st.ok()) {
        return fail(st);
      }
      if (auto st = WaitServing(procs_.back(), stop_requested); !st.ok()) return fail(st);
    }
    {
      std::string stage0 = c.StageAddress(0, r), last = c.StageAddress(c.stages - 1, r);
      if (!options_.links.empty()) {  // over the emulated links
        stage0 = options_.links.StageDataAddress(0) + ":" + PortOf(stage0);
        last = options_.links.LastStageResultsAddress() + ":" + PortOf(last);
      }
      std::vector<std::string> argv = {
          draft_bin, "--listen", c.DraftAddress(r), "--stage0", stage0, "--last",
          last,      "--model",  c.model,           "--mode",   c.mode};
      if (!c.model_id.empty()) argv.insert(argv.end(), {"--model-id", c.model_id});
      if (!c.draft_model.empty()) argv.insert(argv.end(), {"--draft-model", c.draft_model});
      if (const std::string m = c.DraftMetricsAddress(r); !m.empty()) {
        argv.insert(argv.end(), {"--metrics-listen", m});
      }
      const std::vector<std::string> spec_args = DraftArgs(c);  // the knob table's flags
      argv.insert(argv.end(), spec_args.begin(), spec_args.end());
      if (c.emulate_link_us > 0) {
        argv.insert(argv.end(), {"--emulate-link-us", std::to_string(c.emulate_link_us)});
      }
      if (c.emulate_link_mbps > 0) {  // in-process pacing on top of tbf (docs/link-emulation.md)
        argv.insert(argv.end(), {"--emulate-link-mbps", absl::StrCat(c.emulate_link_mbps)});
      }
      const std::vector<std::string> tls_args = TlsArgs(c, "draft");
      argv.insert(argv.end(), tls_args.begin(), tls_args.end());
      const std::vector<std::string> log_args = LogArgs(c);
      argv.insert(argv.end(), log_args.begin(), log_args.end());
      if (auto st = Spawn(who + "draft", c.DraftAddress(r), argv); !st.ok()) return fail(st);
      if (auto st = WaitServing(procs_.back(), stop_requested); !st.ok()) return fail(st);
    }
  }
  if (options_.router) {
    std::vector<std::string> argv = {router_bin,
                                     "--http",
                                     c.RouterHttpAddress(),
                                     "--grpc",
                                     c.RouterGrpcAddress(),
                                     "--draft",
                                     c.DraftAddresses(),
                                     "--model",
                                     c.model,
                                     "--max-inflight",
                                     std::to_string(c.concurrency)};
    if (!c.model_id.empty()) argv.insert(argv.end(), {"--model-id", c.model_id});
    if (!c.chat_template.empty()) argv.insert(argv.end(), {"--chat-template", c.chat_template});
    const std::vector<std::string> tls_args = TlsArgs(c, "router");
    argv.insert(argv.end(), tls_args.begin(), tls_args.end());
    if (!c.api_keys_file.empty()) argv.insert(argv.end(), {"--api-keys-file", c.api_keys_file});
    const std::vector<std::string> log_args = LogArgs(c);
    argv.insert(argv.end(), log_args.begin(), log_args.end());
    if (auto st = Spawn("router", c.RouterGrpcAddress(), argv); !st.ok()) return fail(st);
    if (auto st = WaitServing(procs_.back(), stop_requested, c.RouterHttpAddress()); !st.ok()) {
      return fail(st);
    }
  }
  return absl::OkStatus();
}

ClusterState Supervisor::State() const {
  ClusterState s;
  s.processes = procs_;
  s.log_dir = options_.log_dir;
  s.links = options_.links;
  s.tls_dir = config_.tls_dir;
  s.api_keys_file = config_.api_keys_file;
  if (!options_.supervisor_log.empty()) {
    s.supervisor.pid = getpid();
    s.supervisor.start_time = ProcessStartTime(s.supervisor.pid);
    s.supervisor.log = options_.supervisor_log;
  }
  for (int i = 0; i < config_.stages; ++i) {
    s.endpoints.stages.push_back(StageEndpoint(i));
    const std::string m = StageMetricsEndpoint(i);
    if (!m.empty()) s.endpoints.stage_metrics.push_back(m);
  }
  s.endpoints.draft = config_.DraftAddress();
  s.endpoints.draft_metrics = config_.DraftMetricsAddress();
  for (int r = 0; r < config_.replicas; ++r) s.endpoints.drafts.push_back(config_.DraftAddress(r));
  if (options_.router) {
    s.endpoints.router_http = config_.RouterHttpAddress();
    s.endpoints.router_grpc = config_.RouterGrpcAddress();
  }
  return s;
}

}  // namespace pipeinfer::cluster
