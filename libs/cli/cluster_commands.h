// Local-cluster commands: `pipeinfer up`, `down` (client commands: client_commands.h).
#pragma once

#include <CLI/CLI.hpp>

namespace pipeinfer::cli {

void RegisterClusterCommands(CLI::App& app);

}  // namespace pipeinfer::cli
