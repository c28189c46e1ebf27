// `pipeinfer`: the project's command-line tool: model tools and local-cluster commands.
#include <CLI/CLI.hpp>

#include "cli/bench_commands.h"
#include "cli/calibrate_commands.h"
#include "cli/chat_template_commands.h"
#include "cli/client_commands.h"
#include "cli/cluster_commands.h"
#include "cli/engine_commands.h"
#include "cli/gguf_commands.h"
#include "cli/plan_commands.h"
#include "cli/tokenize_commands.h"

int main(int argc, char** argv) {
  CLI::App app{"pipeinfer: pipelined speculative inference cluster tools"};
  app.require_subcommand(1);
  pipeinfer::cli::RegisterGgufCommands(app);
  pipeinfer::cli::RegisterTokenizeCommands(app);
  pipeinfer::cli::RegisterChatTemplateCommands(app);
  pipeinfer::cli::RegisterEngineCommands(app);
  pipeinfer::cli::RegisterCalibrateCommands(app);
  pipeinfer::cli::RegisterClusterCommands(app);
  pipeinfer::cli::RegisterClientCommands(app);
  pipeinfer::cli::RegisterBenchCommands(app);
  pipeinfer::cli::RegisterPlanCommands(app);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
