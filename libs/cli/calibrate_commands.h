// `pipeinfer calibrate-draft`: measures where the target's greedy token ranks under a draft model's
// distribution (teacher-forced over a text), the histogram that the oracle draft's rank model
// (libs/draft_server/oracle_ranks.h) bakes in. See docs/draft-emulation.md.
#pragma once

#include <CLI/CLI.hpp>

namespace pipeinfer::cli {

void RegisterCalibrateCommands(CLI::App& app);

}  // namespace pipeinfer::cli
