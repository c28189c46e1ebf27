// `pipeinfer gguf ...` subcommands (model file tools).
#pragma once

#include <CLI/CLI.hpp>

namespace pipeinfer::cli {

// Adds `gguf inspect FILE` to `app`.
void RegisterGgufCommands(CLI::App& app);

}  // namespace pipeinfer::cli
