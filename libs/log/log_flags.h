// The --log-format and --log-level flags every binary takes (CLI11; included by mains only).
#pragma once

#include <CLI/CLI.hpp>

#include "log/log.h"

namespace pipeinfer::log {

inline void AddFlags(CLI::App& app, Options* o) {
  app.add_option("--log-format", o->format, "Log line format on stderr: text or json")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
  app.add_option("--log-level", o->level, "Least severe level logged")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
}

}  // namespace pipeinfer::log
