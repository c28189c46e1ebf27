// Local-cluster commands: `pipeinfer up`, `down`, `chat`, `complete`, `stats`.
#pragma once

#include <CLI/CLI.hpp>

namespace pipeinfer::cli {

void RegisterClusterCommands(CLI::App& app);

}  // namespace pipeinfer::cli
