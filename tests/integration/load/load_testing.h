// Helpers of the load suites (eight users, KV admission, batched = unbatched): a raw HTTP/1.1
// client that keeps every byte the router sent (so a test can tell "no SSE byte at all" from "an
// error after the stream started"), an SSE answer checker, the services' counters over gRPC
// (Stage/Draft GetStats, GetInfo) and Prometheus text, and polling.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pipeinfer/v1/draft.grpc.pb.h"
#include "pipeinfer/v1/stage.grpc.pb.h"

namespace pipeinfer::testing {

// ---------------------------------------------------------------------------------------------
// HTTP

struct HttpResult {
  bool complete = false;  // a whole response (head and framed body) arrived
  std::string failure;    // why not, when !complete
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string raw;                             // every byte received, head included
  std::string body;                            // de-chunked body
  double seconds = 0;                          // request sent -> end of the response
};

inline std::string LowerCase(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Decodes the chunks of `raw` from `pos`: 1 when the last chunk arrived, 0 when more bytes are
// needed, -1 on bad framing.
inline int DechunkInto(const std::string& raw, size_t pos, std::string* body) {
  body->clear();
  while (true) {
    const size_t eol = raw.find("\r\n", pos);
    if (eol == std::string::npos) return 0;
    char* end = nullptr;
    const std::string size_line = raw.substr(pos, eol - pos);
    const unsigned long size = std::strtoul(size_line.c_str(), &end, 16);
    if (end == size_line.c_str()) return -1;
    if (size == 0) return raw.find("\r\n", eol + 2) == std::string::npos ? 0 : 1;
    if (raw.size() < eol + 2 + size + 2) return 0;
    body->append(raw, eol + 2, size);
    pos = eol + 2 + size + 2;
  }
}

// One request on its own connection ("Connection: close"), read to the end of the response.
inline HttpResult HttpRequest(int port, const std::string& method, const std::string& path,
                              const std::string& body = "",
                              std::chrono::seconds timeout = std::chrono::seconds(120)) {
  HttpResult r;
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    r.failure = "socket: " + std::string(std::strerror(errno));
    return r;
  }
  timeval tv{static_cast<time_t>(timeout.count()), 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    r.failure = "connect: " + std::string(std::strerror(errno));
    close(fd);
    return r;
  }
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  if (!body.empty()) {
    req +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n" + body;
  for (size_t sent = 0; sent < req.size();) {
    const ssize_t n = send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      r.failure = "send: " + std::string(std::strerror(errno));
      close(fd);
      return r;
    }
    sent += static_cast<size_t>(n);
  }
  const auto t0 = std::chrono::steady_clock::now();
  size_t body_start = std::string::npos;
  bool chunked = false;
  long long length = -1;
  char buf[16384];
  while (true) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      r.failure = "recv: " + std::string(std::strerror(errno));
      break;
    }
    if (n == 0) {
      if (body_start == std::string::npos) {
        r.failure = "closed before the response head";
      } else if (chunked || length >= 0) {
        r.failure = "closed inside the body";
      } else {
        r.body = r.raw.substr(body_start);
        r.complete = true;
      }
      break;
    }
    r.raw.append(buf, static_cast<size_t>(n));
    if (body_start == std::string::npos) {
      const size_t end = r.raw.find("\r\n\r\n");
      if (end == std::string::npos) continue;
      body_start = end + 4;
      std::istringstream head(r.raw.substr(0, end));
      std::string line;
      std::getline(head, line);
      if (line.rfind("HTTP/1.", 0) != 0 || line.size() < 12) {
        r.failure = "bad status line: " + line;
        break;
      }
      r.status = std::atoi(line.c_str() + 9);
      while (std::getline(head, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        const size_t colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string value = line.substr(colon + 1);
        value.erase(0, value.find_first_not_of(" \t"));
        r.headers[LowerCase(line.substr(0, colon))] = value;
      }
      chunked = LowerCase(r.headers["transfer-encoding"]).find("chunked") != std::string::npos;
      if (!chunked && r.headers.count("content-length")) {
        length = std::atoll(r.headers["content-length"].c_str());
      }
    }
    if (chunked) {
      const int d = DechunkInto(r.raw, body_start, &r.body);
      if (d < 0) {
        r.failure = "bad chunked framing";
        break;
      }
      if (d > 0) {
        r.complete = true;
        break;
      }
    } else if (length >= 0 && r.raw.size() - body_start >= static_cast<size_t>(length)) {
      r.body = r.raw.substr(body_start, static_cast<size_t>(length));
      r.complete = true;
      break;
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  close(fd);
  return r;
}

inline std::string Clip(const std::string& s, size_t n = 800) {
  return s.size() <= n ? s : s.substr(0, n) + "...(" + std::to_string(s.size()) + " bytes)";
}

// j[key] for reading: null when j is not an object or has no such member. (operator[] of a const
// nlohmann::json on a missing key is undefined behaviour, and the finish chunk of a chat stream
// has an empty delta.)
inline const nlohmann::json& Member(const nlohmann::json& j, const char* key) {
  static const nlohmann::json kNull;
  if (!j.is_object()) return kNull;
  const auto it = j.find(key);
  return it == j.end() ? kNull : *it;
}

// What a streamed OpenAI answer held. `problem` is empty when the stream is well formed: every
// event is one "data: <chunk>" line, no chunk is an error, exactly one chunk carries a
// finish_reason ("stop" or "length") with usage, and "data: [DONE]" comes last.
struct StreamedAnswer {
  std::string problem;
  int content_deltas = 0;  // chunks with non-empty text
  std::string text;
  std::string finish_reason;
  int completion_tokens = -1;
  int prompt_tokens = -1;
};

inline StreamedAnswer CheckStreamedAnswer(const HttpResult& r, bool chat) {
  using json = nlohmann::json;
  StreamedAnswer a;
  if (!r.complete) {
    a.problem = "incomplete response (" + r.failure + "): " + Clip(r.raw);
    return a;
  }
  if (r.status != 200) {
    a.problem = "HTTP " + std::to_string(r.status) + ": " + Clip(r.body);
    return a;
  }
  if (r.headers.count("content-type") == 0 ||
      r.headers.at("content-type").find("text/event-stream") == std::string::npos) {
    a.problem = "200 without text/event-stream: " + Clip(r.raw);
    return a;
  }
  bool done = false, finished = false;
  for (size_t pos = 0; pos < r.body.size();) {
    const size_t end = r.body.find("\n\n", pos);
    if (end == std::string::npos) {
      a.problem = "unterminated event: " + Clip(r.body.substr(pos));
      return a;
    }
    const std::string ev = r.body.substr(pos, end - pos);
    pos = end + 2;
    if (ev.rfind("data: ", 0) != 0 || ev.find('\n') != std::string::npos) {
      a.problem = "not one data line: " + Clip(ev);
      return a;
    }
    if (done) {
      a.problem = "event after [DONE]: " + Clip(ev);
      return a;
    }
    if (ev == "data: [DONE]") {
      done = true;
      continue;
    }
    const json c = json::parse(ev.substr(6), nullptr, false);
    if (!c.is_object()) {
      a.problem = "chunk is not JSON: " + Clip(ev);
      return a;
    }
    if (c.contains("error")) {
      a.problem = "error event: " + Clip(ev);
      return a;
    }
    if (finished) {
      a.problem = "chunk after the finish chunk: " + Clip(ev);
      return a;
    }
    const json& choices = Member(c, "choices");
    if (!choices.is_array() || choices.size() != 1) {
      a.problem = "malformed chunk: " + Clip(ev);
      return a;
    }
    const json& ch = choices[0];
    const json& t = chat ? Member(Member(ch, "delta"), "content") : Member(ch, "text");
    if (t.is_string() && !t.get<std::string>().empty()) {
      ++a.content_deltas;
      a.text += t.get<std::string>();
    }
    const json& finish = Member(ch, "finish_reason");
    if (!finish.is_null()) {
      finished = true;
      a.finish_reason = finish.is_string() ? finish.get<std::string>() : finish.dump();
      if (a.finish_reason != "stop" && a.finish_reason != "length") {
        a.problem = "finish_reason " + a.finish_reason;
        return a;
      }
      const json& u = Member(c, "usage");
      if (!Member(u, "completion_tokens").is_number_integer()) {
        a.problem = "finish chunk without usage: " + Clip(ev);
        return a;
      }
      a.completion_tokens = Member(u, "completion_tokens").get<int>();
      if (Member(u, "prompt_tokens").is_number_integer()) {
        a.prompt_tokens = Member(u, "prompt_tokens").get<int>();
      }
    }
  }
  if (!finished) {
    a.problem = "no finish chunk: " + Clip(r.body);
  } else if (!done) {
    a.problem = "no data: [DONE]: " + Clip(r.body);
  }
  return a;
}

// ---------------------------------------------------------------------------------------------
// Counters and state of the services

using Counters = std::map<std::string, double>;

inline Counters ToCounters(const v1::ServiceStats& s) {
  Counters c;
  for (const auto& k : s.counters()) c[k.name()] = k.value();
  return c;
}

// GetStats of one service (Service: v1::Stage or v1::Draft) without the ones behind it; empty on
// failure.
template <typename Service>
Counters ServiceCounters(const std::string& addr) {
  auto stub = Service::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::StatsResponse resp;
  const grpc::Status st = stub->GetStats(&ctx, v1::StatsRequest(), &resp);
  EXPECT_TRUE(st.ok()) << addr << ": " << st.error_message();
  return st.ok() && resp.services_size() > 0 ? ToCounters(resp.services(0)) : Counters{};
}

// Stage.GetStats of one stage (without the stages behind it); empty on failure.
inline Counters StageCounters(const std::string& addr) { return ServiceCounters<v1::Stage>(addr); }

// Draft.GetStats of the draft service alone; empty on failure.
inline Counters DraftCounters(const std::string& addr) { return ServiceCounters<v1::Draft>(addr); }

inline v1::StageInfo StageInfoOf(const std::string& addr) {
  auto stub = v1::Stage::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::StageInfo info;
  const grpc::Status st = stub->GetInfo(&ctx, v1::StageInfoRequest(), &info);
  EXPECT_TRUE(st.ok()) << addr << ": " << st.error_message();
  return info;
}

inline v1::DraftInfo DraftInfoOf(const std::string& addr) {
  auto stub = v1::Draft::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::DraftInfo info;
  const grpc::Status st = stub->GetInfo(&ctx, v1::DraftInfoRequest(), &info);
  EXPECT_TRUE(st.ok()) << addr << ": " << st.error_message();
  return info;
}

// The sum of the samples of metric `name` (any labels) in Prometheus text; -1 when absent.
inline double PrometheusValue(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  double sum = 0;
  bool found = false;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#' || line.rfind(name, 0) != 0) continue;
    const char next = line.size() > name.size() ? line[name.size()] : '\0';
    if (next != ' ' && next != '{') continue;
    sum += std::strtod(line.c_str() + line.rfind(' ') + 1, nullptr);
    found = true;
  }
  return found ? sum : -1;
}

// Polls `done` every 20 ms until it holds or `timeout` passes; its final value.
inline bool PollUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

// No KV block referenced or reserved and no session open on the stage.
inline bool StageIdle(const std::string& addr, std::string* state) {
  const v1::StageInfo i = StageInfoOf(addr);
  *state = "stage " + std::to_string(i.stage_index()) + " at " + addr + ": kv_blocks_in_use " +
           std::to_string(i.kv_blocks_in_use()) + ", kv_blocks_reserved " +
           std::to_string(i.kv_blocks_reserved()) + " of " + std::to_string(i.kv_blocks_total()) +
           ", sessions_open " + std::to_string(i.sessions_open());
  return i.kv_blocks_total() > 0 && i.kv_blocks_in_use() == 0 && i.kv_blocks_reserved() == 0 &&
         i.sessions_open() == 0;
}

}  // namespace pipeinfer::testing
