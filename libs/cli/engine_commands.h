// Single-process engine tools: `pipeinfer generate`, `pipeinfer logits`, `pipeinfer gguf synth`.
#pragma once

#include <CLI/CLI.hpp>

namespace pipeinfer::cli {

// Needs RegisterGgufCommands() to have run first (adds `synth` under `gguf`).
void RegisterEngineCommands(CLI::App& app);

}  // namespace pipeinfer::cli
