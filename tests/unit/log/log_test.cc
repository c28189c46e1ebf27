// The log line formats, checked by parsing what the process writes to stderr: JSON lines with an
// independent JSON parser (nlohmann), text lines field by field.
#include "log/log.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace pipeinfer::log {
namespace {

// Captures what is written to stderr (fd 2) while alive.
class StderrCapture {
 public:
  StderrCapture() {
    std::fflush(stderr);
    saved_ = dup(2);
    file_ = std::tmpfile();
    dup2(fileno(file_), 2);
  }
  ~StderrCapture() {
    if (saved_ >= 0) Stop();
    std::fclose(file_);
  }
  std::string Stop() {
    std::fflush(stderr);
    dup2(saved_, 2);
    close(saved_);
    saved_ = -1;
    std::string out;
    std::rewind(file_);
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof(buf), file_)) > 0;) out.append(buf, n);
    return out;
  }

 private:
  int saved_ = -1;
  FILE* file_ = nullptr;
};

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  for (size_t nl; (nl = s.find('\n', at)) != std::string::npos; at = nl + 1) {
    out.push_back(s.substr(at, nl - at));
  }
  return out;
}

TEST(LogTest, JsonLinesParseAndCarryTheRequestId) {
  ASSERT_TRUE(Init("draft", {"json", "info"}).ok());
  StderrCapture cap;
  spdlog::debug("not at info");
  spdlog::info("plain \"quoted\" \\ and\ttab\nnewline \x01");
  {
    RequestScope scope("req-42");
    Event(spdlog::level::warn, "request",
          {{"status", "OK"}, {"tokens", 12}, {"ttft_s", 0.25}, {"nan", 0.0 / 0.0}});
    std::thread([] { spdlog::info("other thread"); }).join();  // no id: the scope is per thread
  }
  spdlog::error("after");
  const std::vector<std::string> lines = Lines(cap.Stop());
  ASSERT_EQ(lines.size(), 4u);
  std::vector<nlohmann::json> j;
  for (const std::string& l : lines) j.push_back(nlohmann::json::parse(l));  // throws if invalid
  EXPECT_EQ(j[0]["msg"], "plain \"quoted\" \\ and\ttab\nnewline \x01");
  EXPECT_EQ(j[0]["level"], "info");
  EXPECT_EQ(j[0]["service"], "draft");
  EXPECT_EQ(j[0]["pid"], getpid());
  EXPECT_FALSE(j[0].contains("request_id"));
  const std::string ts = j[0]["ts"];
  ASSERT_EQ(ts.size(), 24u) << ts;  // 2026-12-06T23:59:01.123Z
  EXPECT_EQ(ts[10], 'T');
  EXPECT_EQ(ts.back(), 'Z');
  EXPECT_EQ(j[1]["request_id"], "req-42");
  EXPECT_EQ(j[1]["level"], "warn");
  EXPECT_EQ(j[1]["msg"], "request");
  EXPECT_EQ(j[1]["status"], "OK");
  EXPECT_EQ(j[1]["tokens"], 12);
  EXPECT_DOUBLE_EQ(j[1]["ttft_s"].get<double>(), 0.25);
  EXPECT_TRUE(j[1]["nan"].is_null());
  EXPECT_FALSE(j[2].contains("request_id"));
  EXPECT_EQ(j[2]["msg"], "other thread");
  EXPECT_EQ(j[3]["level"], "error");
  EXPECT_FALSE(j[3].contains("status"));  // fields belong to their Event only
}

TEST(LogTest, TextLinesHaveTimeLevelServiceIdAndFields) {
  ASSERT_TRUE(Init("stage3", {"text", "warn"}).ok());
  StderrCapture cap;
  spdlog::info("below the level");
  {
    RequestScope scope("chatcmpl-7");
    Event(spdlog::level::warn, "session failed", {{"session", 5}, {"error", "two words"}});
  }
  const std::vector<std::string> lines = Lines(cap.Stop());
  ASSERT_EQ(lines.size(), 1u);
  const std::string& l = lines[0];
  EXPECT_EQ(l.substr(24), " warn stage3 [chatcmpl-7] session failed session=5 error=\"two words\"")
      << l;
}

TEST(LogTest, BadOptionsAreRefusedWithTheValue) {
  absl::Status st = Init("router", {"yaml", "info"});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("yaml"), absl::string_view::npos) << st;
  st = Init("router", {"text", "loud"});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("loud"), absl::string_view::npos) << st;
}

}  // namespace
}  // namespace pipeinfer::log
