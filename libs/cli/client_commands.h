// Client commands against a running cluster: `pipeinfer chat`, `complete`, `stats`.
#pragma once

#include <CLI/CLI.hpp>

namespace pipeinfer::cli {

void RegisterClientCommands(CLI::App& app);

}  // namespace pipeinfer::cli
