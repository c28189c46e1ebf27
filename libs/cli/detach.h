// Detaching `pipeinfer up --detach`: the command forks its supervisor, a child in a session of its
// own that starts the cluster, stays behind to supervise it, and is stopped by `pipeinfer down`.
// Until the cluster is up the supervisor's stdout and stderr reach the user through the command;
// then it switches them to its log file and tells the command, which exits 0. When the supervisor
// exits before that (the cluster did not start), the command exits with its exit code.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace pipeinfer::cli {

// Forks the supervisor. Call before any thread exists. In the supervisor: returns -1 (carry on
// starting the cluster). In the command: relays the supervisor's output until it detaches or
// exits and returns the command's exit code; a non-zero `*stop` (set from a signal handler) is
// passed on to the supervisor as SIGTERM (it then stops what it had started).
int ForkSupervisor(const volatile int* stop);

// In the supervisor, once the cluster is up: stdout and stderr go to `log` (appended) from now
// on, and the command is told that the cluster is up.
absl::Status DetachOutput(const std::string& log);

}  // namespace pipeinfer::cli
