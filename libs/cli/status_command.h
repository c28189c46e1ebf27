// `pipeinfer status [--state FILE] [--json]`: the processes of a detached cluster (from its state
// file) with their supervision record and each service's health; exit code 0 when every process
// runs and serves, 1 when the cluster is unhealthy, 2 when there is no readable state file.
#pragma once

#include <CLI/CLI.hpp>

namespace pipeinfer::cli {

void RegisterStatusCommand(CLI::App& app);

}  // namespace pipeinfer::cli
