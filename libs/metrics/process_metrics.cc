#include "metrics/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

namespace pipeinfer::metrics {
namespace {

prometheus::MetricFamily Single(const char* name, const char* help, prometheus::MetricType type,
                                double value) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(m);
  return f;
}

// The fields of /proc/self/stat after the command name (field 3 onwards).
bool ReadStat(std::vector<std::string>* fields) {
  std::ifstream in("/proc/self/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  const size_t close = line.rfind(')');  // the command name may hold spaces and parentheses
  if (close == std::string::npos) return false;
  std::istringstream rest(line.substr(close + 1));
  for (std::string f; rest >> f;) fields->push_back(f);
  return fields->size() > 20;
}

// Seconds since the epoch at which the system booted (/proc/stat btime); -1 if unknown.
double BootTime() {
  std::ifstream in("/proc/stat");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("btime ", 0) == 0) return std::stod(line.substr(6));
  }
  return -1;
}

}  // namespace

std::vector<prometheus::MetricFamily> ProcessMetricFamilies() {
  std::vector<prometheus::MetricFamily> out;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  std::vector<std::string> f;
  if (ticks > 0 && ReadStat(&f)) {
    // Relative to field 3 (state): utime is field 14, stime 15, starttime 22, vsize 23, rss 24.
    const double utime = std::stod(f[11]), stime = std::stod(f[12]);
    const double start_ticks = std::stod(f[19]), vsize = std::stod(f[20]), rss = std::stod(f[21]);
    out.push_back(Single("process_cpu_seconds_total", "User and system CPU time spent in seconds",
                         prometheus::MetricType::Counter, (utime + stime) / ticks));
    out.push_back(Single("process_virtual_memory_bytes", "Virtual memory size in bytes",
                         prometheus::MetricType::Gauge, vsize));
    out.push_back(Single("process_resident_memory_bytes", "Resident memory size in bytes",
                         prometheus::MetricType::Gauge, rss * page));
    const double boot = BootTime();
    if (boot >= 0) {
      out.push_back(Single("process_start_time_seconds",
                           "Start time of the process since the Unix epoch in seconds",
                           prometheus::MetricType::Gauge, boot + start_ticks / ticks));
    }
  }
  if (DIR* d = opendir("/proc/self/fd")) {
    double n = 0;
    while (const dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') ++n;
    }
    closedir(d);
    out.push_back(Single("process_open_fds", "Number of open file descriptors",
                         prometheus::MetricType::Gauge, n - 1));  // less the one opendir holds
  }
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    out.push_back(Single("process_max_fds", "Maximum number of open file descriptors",
                         prometheus::MetricType::Gauge, static_cast<double>(rl.rlim_cur)));
  }
  return out;
}

}  // namespace pipeinfer::metrics
