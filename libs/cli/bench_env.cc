#include "cli/bench_env.h"

#include <sched.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

namespace pipeinfer::cli {
namespace {

std::string ShellQuote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789-_=./:,@+%") == std::string::npos) {
    return s;
  }
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// The command line as run (from /proc/self/cmdline), program name without its directory.
std::string CommandLine() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  std::string cur;
  for (char c : all) {
    if (c == '\0') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) args.push_back(cur);
  std::string out;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    if (i == 0) a = a.substr(a.rfind('/') == std::string::npos ? 0 : a.rfind('/') + 1);
    out += (i ? " " : "") + ShellQuote(a);
  }
  return out;
}

std::string UtcNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

int NProc() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
}

std::string CpuModel() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("model name", 0) == 0) {
      const size_t c = line.find(':');
      if (c != std::string::npos) {
        const size_t s = line.find_first_not_of(" \t", c + 1);
        return s == std::string::npos ? "" : line.substr(s);
      }
    }
  }
  return "unknown";
}

// The first line `cmd` prints, empty when it fails or prints nothing.
std::string FirstLine(const std::string& cmd, int* exit_status = nullptr) {
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return "";
  char buf[256];
  std::string out;
  if (std::fgets(buf, sizeof(buf), p)) out = buf;
  while (std::fgets(buf, sizeof(buf), p)) {
  }
  const int st = pclose(p);
  if (exit_status) *exit_status = st;
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return st == 0 ? out : "";
}

// The commit of the checkout the binary was built in: its build folder usually lies inside the
// checkout, so git runs from the binary's directory (the working directory as a fallback, for an
// installed binary run from a checkout). "unknown" without git or outside a checkout.
std::string Commit() {
  std::vector<std::string> dirs;
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) dirs.push_back(exe.parent_path().string());
  dirs.push_back(".");
  for (const std::string& d : dirs) {
    const std::string git = "git -C " + ShellQuote(d) + " ";
    const std::string hash = FirstLine(git + "rev-parse --short=12 HEAD 2>/dev/null");
    if (hash.empty()) continue;
    // Benchmarks often run on uncommitted edits; say so rather than pretend the hash is the code.
    int st = 0;
    FirstLine(git + "diff --quiet HEAD -- 2>/dev/null", &st);
    return st == 0 ? hash : hash + " (+ uncommitted changes)";
  }
  return "unknown";
}

}  // namespace

RunEnv CollectRunEnv() {
  RunEnv e;
  e.command = CommandLine();
  e.date = UtcNow();
  e.nproc = NProc();
  e.cpu = CpuModel();
  e.commit = Commit();
  return e;
}

}  // namespace pipeinfer::cli
