// The knob table (knobs.h) as CLI11 flags: one call adds every speculation knob to a command, so
// pipeinfer-draft, `pipeinfer up`, `pipeinfer complete` and `pipeinfer bench` offer the same flags
// with the same help and reject the same values with the same message.
#pragma once

#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include "spec/knobs.h"

namespace pipeinfer::spec {

struct KnobFlagOptions {
  // The ranges that apply: a service default's (0 may mean "derived") or a request's.
  KnobScope scope = KnobScope::kDefault;
  // Show each knob's value in `*settings` as its default in --help (for the draft service; a
  // client's unset knob means "the service's default" instead).
  bool show_defaults = false;
  // Knobs not offered (by name), e.g. `bench` sets the mode and the ablations per row.
  std::vector<std::string_view> skip;
};

// Adds a flag for every knob (--mode M, --draft-max N, ..., --no-cancel): a given flag's value is
// checked against the table and recorded in `*settings` (KnobSettings::given tells which were
// given). `settings` must outlive parsing. Callers may adjust a flag's description afterwards
// (app.get_option("--mode")->description(...)).
void AddKnobFlags(CLI::App& app, KnobSettings* settings, const KnobFlagOptions& options = {});

}  // namespace pipeinfer::spec
