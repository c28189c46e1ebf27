// Process logging for every binary: spdlog on stderr, one line per event, as text
// (`2026-12-06T23:59:01.123Z info router [req-1] message key=value`) or as one JSON object per line
// (`{"ts":"…","level":"info","service":"router","request_id":"req-1","msg":"message","key":value}`),
// chosen with --log-format; --log-level filters. Log through spdlog (spdlog::info(...)) or
// Event() for lines with fields (access logs). Lines logged while a RequestScope is alive on the
// same thread carry its request id.
#pragma once

#include <spdlog/common.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace pipeinfer::log {

struct Options {
  std::string format = "text";  // text | json
  std::string level = "info";   // trace | debug | info | warn | error | off
};

// Installs the default logger (stderr, thread-safe) for `service` ("router", "draft", "stage3",
// "pipeinfer"). InvalidArgument for an unknown format or level. May be called again (tests).
absl::Status Init(std::string_view service, const Options& options);

// For a main's start-up errors: logs `message` at error level ("error: <message>" on stderr
// before Init) and returns 1, the exit status.
int Fail(std::string_view message);

// True once Init chose the JSON format.
bool Json();

// The request id of lines logged on this thread while the scope lives (nested scopes restore the
// outer id). An empty id logs without one.
class RequestScope {
 public:
  explicit RequestScope(std::string request_id);
  ~RequestScope();
  RequestScope(const RequestScope&) = delete;
  RequestScope& operator=(const RequestScope&) = delete;

 private:
  std::string previous_;
};

// The id set by the innermost RequestScope of this thread ("" when none).
const std::string& CurrentRequestId();

// One key of a structured line. Numbers are written bare in JSON, strings quoted.
struct Field {
  Field(std::string k, std::string_view v) : key(std::move(k)), value(v) {}
  Field(std::string k, const char* v) : key(std::move(k)), value(v) {}
  Field(std::string k, int64_t v) : key(std::move(k)), value(std::to_string(v)), number(true) {}
  Field(std::string k, int v) : key(std::move(k)), value(std::to_string(v)), number(true) {}
  Field(std::string k, uint64_t v) : key(std::move(k)), value(std::to_string(v)), number(true) {}
  Field(std::string k, double v);
  std::string key, value;
  bool number = false;
};

// Logs `message` with `fields` (text: appended as key=value; JSON: extra keys of the object).
void Event(spdlog::level::level_enum level, std::string_view message,
           std::initializer_list<Field> fields);

}  // namespace pipeinfer::log
