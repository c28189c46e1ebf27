#include "log/log.h"

#include <spdlog/formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <ctime>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"

namespace pipeinfer::log {
namespace {

thread_local std::string tls_request_id;
// The fields of the Event() being logged on this thread (formatters run on the logging thread).
thread_local const std::vector<Field>* tls_fields = nullptr;
std::atomic<bool> g_json{false};
std::atomic<bool> g_initialized{false};

void AppendTime(std::chrono::system_clock::time_point t, std::string* out) {
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  const size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  out->append(buf, n);
  char frac[8];
  std::snprintf(frac, sizeof(frac), ".%03dZ", static_cast<int>(ms % 1000));
  out->append(frac);
}

void AppendJsonString(std::string_view s, std::string* out) {
  out->push_back('"');
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (c < 0x20) {
          char esc[8];
          std::snprintf(esc, sizeof(esc), "\\u%04x", c);
          out->append(esc);
        } else {
          out->push_back(ch);
        }
    }
  }
  out->push_back('"');
}

std::string_view LevelName(spdlog::level::level_enum l) {
  switch (l) {
    case spdlog::level::trace:
      return "trace";
    case spdlog::level::debug:
      return "debug";
    case spdlog::level::info:
      return "info";
    case spdlog::level::warn:
      return "warn";
    case spdlog::level::err:
      return "error";
    case spdlog::level::critical:
      return "critical";
    default:
      return "off";
  }
}

// `ts level service [request] message key=value…`
class TextFormatter final : public spdlog::formatter {
 public:
  explicit TextFormatter(std::string service) : service_(std::move(service)) {}
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    std::string line;
    AppendTime(msg.time, &line);
    line.append(" ").append(LevelName(msg.level)).append(" ").append(service_);
    if (!tls_request_id.empty()) line.append(" [").append(tls_request_id).append("]");
    line.append(" ").append(msg.payload.data(), msg.payload.size());
    if (tls_fields) {
      for (const Field& f : *tls_fields) {
        const bool plain = f.number || (!f.value.empty() &&
                                        f.value.find_first_of(" \"=\t\n") == std::string::npos);
        line.append(" ").append(f.key).append("=");
        if (plain) {
          line.append(f.value);
        } else {
          AppendJsonString(f.value, &line);
        }
      }
    }
    line.push_back('\n');
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<TextFormatter>(service_);
  }

 private:
  std::string service_;
};

// One JSON object per line.
class JsonFormatter final : public spdlog::formatter {
 public:
  explicit JsonFormatter(std::string service) : service_(std::move(service)) {}
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    std::string line = "{\"ts\":\"";
    AppendTime(msg.time, &line);
    line.append("\",\"level\":\"").append(LevelName(msg.level)).append("\",\"service\":");
    AppendJsonString(service_, &line);
    line.append(",\"pid\":").append(std::to_string(pid_));
    if (!tls_request_id.empty()) {
      line.append(",\"request_id\":");
      AppendJsonString(tls_request_id, &line);
    }
    line.append(",\"msg\":");
    AppendJsonString(std::string_view(msg.payload.data(), msg.payload.size()), &line);
    if (tls_fields) {
      for (const Field& f : *tls_fields) {
        line.push_back(',');
        AppendJsonString(f.key, &line);
        line.push_back(':');
        if (f.number) {
          line.append(f.value);
        } else {
          AppendJsonString(f.value, &line);
        }
      }
    }
    line.append("}\n");
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>(service_);
  }

 private:
  std::string service_;
  long pid_ = static_cast<long>(getpid());
};

}  // namespace

Field::Field(std::string k, double v) : key(std::move(k)), number(true) {
  if (std::isfinite(v)) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.6g", v);
    value = buf;
  } else {
    value = "null";
  }
}

absl::Status Init(std::string_view service, const Options& options) {
  if (options.format != "text" && options.format != "json") {
    return absl::InvalidArgumentError(
        absl::StrCat("--log-format must be text or json, not '", options.format, "'"));
  }
  const spdlog::level::level_enum level =
      options.level == "warning" ? spdlog::level::warn : spdlog::level::from_str(options.level);
  if (level == spdlog::level::off && options.level != "off") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--log-level must be trace, debug, info, warn, error or off, not '", options.level, "'"));
  }
  auto logger = std::make_shared<spdlog::logger>(std::string(service),
                                                 std::make_shared<spdlog::sinks::stderr_sink_mt>());
  const bool json = options.format == "json";
  if (json) {
    logger->set_formatter(std::make_unique<JsonFormatter>(std::string(service)));
  } else {
    logger->set_formatter(std::make_unique<TextFormatter>(std::string(service)));
  }
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);  // one line per event, written at once
  spdlog::set_default_logger(std::move(logger));
  g_json = json;
  g_initialized = true;
  return absl::OkStatus();
}

int Fail(std::string_view message) {
  if (g_initialized) {
    spdlog::error("error: {}", message);
  } else {
    std::fprintf(stderr, "error: %.*s\n", static_cast<int>(message.size()), message.data());
  }
  return 1;
}

bool Json() { return g_json; }

RequestScope::RequestScope(std::string request_id) : previous_(std::move(tls_request_id)) {
  tls_request_id = std::move(request_id);
}

RequestScope::~RequestScope() { tls_request_id = std::move(previous_); }

const std::string& CurrentRequestId() { return tls_request_id; }

void Event(spdlog::level::level_enum level, std::string_view message,
           std::initializer_list<Field> fields) {
  const std::vector<Field> list(fields);
  const std::vector<Field>* outer = tls_fields;
  tls_fields = &list;
  spdlog::log(level, "{}", message);
  tls_fields = outer;
}

}  // namespace pipeinfer::log
