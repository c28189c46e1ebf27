// Where and how `pipeinfer bench` ran, for the report header: the command line, the date, the
// machine and the source commit. Private to the cli library.
#pragma once

#include <string>

namespace pipeinfer::cli {

struct RunEnv {
  std::string command;  // as run, program name without its directory
  std::string date;     // UTC
  int nproc = 0;        // like `nproc`: the CPUs this process may run on
  std::string cpu;      // /proc/cpuinfo "model name"
  std::string commit;   // short hash (+ a note when the tree has changes), or "unknown"
};

RunEnv CollectRunEnv();

}  // namespace pipeinfer::cli
