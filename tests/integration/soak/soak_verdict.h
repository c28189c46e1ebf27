// The soak test's requests and the classification of each exchange into one outcome
// (tests/integration/soak/soak_test.cc explains the classes).
#pragma once

#include <cstdio>
#include <random>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "integration/soak/soak_http.h"

namespace pipeinfer::soak {

// ---------------------------------------------------------------------------------------------
// Requests.

struct Request {
  std::string path;  // /v1/chat/completions or /v1/completions
  bool chat = true;
  bool stream = true;
  int max_tokens = 0;  // 0: absent (the router fills the rest of the context)
  json body;
};

const char* const kChatPrompts[] = {
    "Tell me about Mr. Darcy.",
    "What do you think of Mrs. Bennet's nerves?",
    "Shall we walk to Meryton this morning?",
    "Is it true that Mr. Bingley has taken Netherfield Park?",
    "Describe the ball at Netherfield.",
    "What did Elizabeth say to Lady Catherine?",
    "Why does Emma meddle so in Harriet's affairs?",
    "Captain Wentworth has returned. What will Anne do?",
    "Do you approve of the match?",
    "Write a letter to your sister about the weather in Bath.",
    "Who is the most agreeable gentleman in the county?",
    "Tell me of the whale.",
    "What sayeth the prophet concerning the wilderness?",
    "How many thousands a year has he?",
    "Hello",
    "Pray, sit down and tell me everything.",
};

const char* const kCompletionPrompts[] = {
    "It is a truth universally acknowledged, that",
    "Emma Woodhouse, handsome, clever, and rich,",
    "The family of Dashwood had long been settled in Sussex.",
    "Call me Ishmael. Some years ago",
    "In the beginning God created",
    "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who",
    "\"My dear Mr. Bennet,\" said his lady to him one day,",
    "No one who had ever seen Catherine Morland in her infancy",
    "And it came to pass",
    "She was",
};

template <typename T, size_t N>
const T& Pick(const T (&items)[N], std::mt19937& rng) {
  return items[std::uniform_int_distribution<size_t>(0, N - 1)(rng)];
}

inline Request MakeRequest(std::mt19937& rng) {
  std::uniform_real_distribution<double> u(0, 1);
  Request r;
  r.chat = u(rng) >= 0.2;
  r.stream = u(rng) >= 0.25;
  r.path = r.chat ? "/v1/chat/completions" : "/v1/completions";
  json& b = r.body;
  if (r.chat) {
    json messages = json::array();
    if (u(rng) < 0.2) {
      messages.push_back({{"role", "system"}, {"content", "You are a lady of Hertfordshire."}});
    }
    if (u(rng) < 0.2) {  // an earlier turn
      messages.push_back({{"role", "user"}, {"content", Pick(kChatPrompts, rng)}});
      messages.push_back({{"role", "assistant"}, {"content", "Indeed, I cannot say."}});
    }
    std::string content = Pick(kChatPrompts, rng);
    if (u(rng) < 0.3) content += std::string(" ") + Pick(kChatPrompts, rng);
    messages.push_back({{"role", "user"}, {"content", content}});
    b["messages"] = messages;
  } else {
    std::string prompt = Pick(kCompletionPrompts, rng);
    if (u(rng) < 0.3) prompt = std::string(Pick(kCompletionPrompts, rng)) + " " + prompt;
    b["prompt"] = prompt;
  }
  if (u(rng) >= 0.15) {
    r.max_tokens = std::uniform_int_distribution<int>(8, 64)(rng);
    b["max_tokens"] = r.max_tokens;
  }
  const double t = u(rng);
  if (t < 0.45) {
    b["temperature"] = 0;
  } else if (t < 0.9) {
    b["temperature"] = std::uniform_int_distribution<int>(2, 12)(rng) / 10.0;
    if (u(rng) < 0.3) b["top_p"] = 0.9;
    if (u(rng) < 0.3) b["seed"] = std::uniform_int_distribution<int>(0, 1 << 20)(rng);
  }  // else: absent, the OpenAI default (1)
  if (u(rng) < 0.1) b["stop"] = json::array({"\n\n", "."});
  if (r.stream) b["stream"] = true;
  if (u(rng) < 0.5) b["model"] = "demo-target-q8_0";
  return r;
}

// ---------------------------------------------------------------------------------------------
// Classification.

enum class Outcome {
  kSuccess,
  kRefused429,
  kRefused503,
  kConnection,
  kMidStream,
  kBadAnswer,
  kHung,
  kOtherStatus,
  kCount
};

inline const char* OutcomeName(Outcome o) {
  switch (o) {
    case Outcome::kSuccess:
      return "success";
    case Outcome::kRefused429:
      return "refused 429";
    case Outcome::kRefused503:
      return "refused 503";
    case Outcome::kConnection:
      return "connection failure";
    case Outcome::kMidStream:
      return "mid-stream failure";
    case Outcome::kBadAnswer:
      return "bad answer";
    case Outcome::kHung:
      return "hung";
    case Outcome::kOtherStatus:
      return "other status";
    case Outcome::kCount:
      break;
  }
  return "?";
}

struct Verdict {
  Outcome outcome = Outcome::kOtherStatus;
  std::string why;
  int tokens = 0;         // completion tokens of a success
  int retry_after_s = 0;  // of a 429
  std::string body;       // of a refusal
};

inline std::string Clip(const std::string& s, size_t n = 600) {
  return s.size() <= n ? s : s.substr(0, n) + "...(" + std::to_string(s.size()) + " bytes)";
}

// Checks a choice's finish_reason and the answer's usage; "" when fine.
inline std::string CheckEnd(const json& finish, const json& usage, int* tokens) {
  if (!finish.is_string() || (finish != "stop" && finish != "length")) {
    return "finish_reason " + finish.dump();
  }
  if (!usage.is_object() || !usage["completion_tokens"].is_number_integer()) {
    return "no usage.completion_tokens";
  }
  *tokens = usage["completion_tokens"].get<int>();
  return "";
}

// A streamed answer: "data: <chunk>\n\n" events, the last chunk with a finish_reason, then
// "data: [DONE]\n\n" and nothing else.
inline Verdict CheckStream(const Request& rq, const Exchange& x) {
  Verdict v;
  v.outcome = Outcome::kMidStream;
  if (x.headers.count("content-type") == 0 ||
      x.headers.at("content-type").find("text/event-stream") == std::string::npos) {
    v.why = "200 stream without text/event-stream";
    return v;
  }
  const std::string want_object = rq.chat ? "chat.completion.chunk" : "text_completion";
  bool done = false, finished = false;
  size_t pos = 0, n_chunks = 0;
  while (pos < x.body.size()) {
    const size_t end = x.body.find("\n\n", pos);
    if (end == std::string::npos) {
      v.why = "unterminated event: " + Clip(x.body.substr(pos));
      return v;
    }
    const std::string ev = x.body.substr(pos, end - pos);
    pos = end + 2;
    if (ev.rfind("data: ", 0) != 0 || ev.find('\n') != std::string::npos) {
      v.why = "not a single data line: " + Clip(ev);
      return v;
    }
    if (done) {
      v.why = "event after [DONE]: " + Clip(ev);
      return v;
    }
    const std::string data = ev.substr(6);
    if (data == "[DONE]") {
      done = true;
      continue;
    }
    const json c = json::parse(data, nullptr, false);
    if (!c.is_object()) {
      v.why = "chunk is not JSON: " + Clip(data);
      return v;
    }
    if (c.contains("error")) {
      v.why = "error event after " + std::to_string(n_chunks) + " chunks: " + Clip(data);
      return v;
    }
    if (finished) {
      v.why = "chunk after the finish chunk: " + Clip(data);
      return v;
    }
    if (c.value("object", "") != want_object || !Member(c, "choices").is_array() ||
        Member(c, "choices").size() != 1) {
      v.why = "malformed chunk: " + Clip(data);
      return v;
    }
    const json& ch = Member(c, "choices").at(0);
    const bool text_ok = rq.chat ? Member(ch, "delta").is_object() &&
                                       (!Member(ch, "delta").contains("content") ||
                                        Member(Member(ch, "delta"), "content").is_string())
                                 : Member(ch, "text").is_string();
    if (!text_ok) {
      v.why = "malformed choice: " + Clip(data);
      return v;
    }
    ++n_chunks;
    if (!Member(ch, "finish_reason").is_null()) {
      finished = true;
      v.why = CheckEnd(Member(ch, "finish_reason"), Member(c, "usage"), &v.tokens);
      if (!v.why.empty()) return v;
    }
  }
  if (!finished || !done) {
    v.why = std::string(finished ? "" : "no finish chunk ") + (done ? "" : "no [DONE] ") +
            "after " + std::to_string(n_chunks) + " chunks: " + Clip(x.body);
    return v;
  }
  v.outcome = Outcome::kSuccess;
  return v;
}

// A whole answer: one JSON object with choices[0] and usage.
inline Verdict CheckWhole(const Request& rq, const Exchange& x) {
  Verdict v;
  v.outcome = Outcome::kMidStream;
  const json j = json::parse(x.body, nullptr, false);
  if (!j.is_object() || j.contains("error") || !Member(j, "choices").is_array() ||
      Member(j, "choices").size() != 1) {
    v.why = "200 body is not an answer: " + Clip(x.body);
    return v;
  }
  const json& ch = Member(j, "choices").at(0);
  const bool text_ok = rq.chat ? Member(ch, "message").is_object() &&
                                     Member(Member(ch, "message"), "content").is_string()
                               : Member(ch, "text").is_string();
  if (j.value("object", "") != (rq.chat ? "chat.completion" : "text_completion") || !text_ok) {
    v.why = "malformed answer: " + Clip(x.body);
    return v;
  }
  v.why = CheckEnd(Member(ch, "finish_reason"), Member(j, "usage"), &v.tokens);
  if (v.why.empty()) v.outcome = Outcome::kSuccess;
  return v;
}

// The error message of a refusal with each number replaced by '#', so that refusals can be counted
// by their reason (the router's queue, the draft service's sessions or KV admission, ...).
inline std::string RefusalMessage(const std::string& body) {
  const json j = json::parse(body, nullptr, false);
  std::string m = j.is_object() && Member(j, "error").is_object() &&
                          Member(Member(j, "error"), "message").is_string()
                      ? Member(Member(j, "error"), "message").get<std::string>()
                      : "(no OpenAI error body) " + Clip(body, 100);
  std::string out;
  for (char c : m) {
    const bool digit = c >= '0' && c <= '9';
    if (!digit) {
      out += c;
    } else if (out.empty() || out.back() != '#') {
      out += '#';
    }
  }
  return out;
}

inline Verdict Classify(const Request& rq, const Exchange& x) {
  Verdict v;
  const std::string where = x.head ? " after the " + std::to_string(x.status) + " head" : "";
  switch (x.transport) {
    case Transport::kComplete:
      break;
    case Transport::kConnectFailed:
    case Transport::kReset:
    case Transport::kSocketError:
    case Transport::kClosedBeforeHead:
      v.outcome = Outcome::kConnection;
      v.why = std::string(TransportName(x.transport)) + where +
              (x.err ? std::string(": ") + std::strerror(x.err) : "");
      return v;
    case Transport::kTimeout:
      v.outcome = Outcome::kHung;
      v.why = "no byte for " + std::to_string(kIdleTimeoutS) + " s" + where;
      return v;
    case Transport::kTruncated:
    case Transport::kBadFraming:
      // Framing broken before a status is known is a connection-level failure; after a 200 the
      // answer was cut or garbled mid-stream.
      v.outcome = x.head && x.status == 200 ? Outcome::kMidStream
                  : x.head                  ? Outcome::kOtherStatus
                                            : Outcome::kConnection;
      v.why = std::string(TransportName(x.transport)) + where + ": " + Clip(x.body);
      return v;
  }
  if (x.status == 429) {
    auto it = x.headers.find("retry-after");
    if (it == x.headers.end() || it->second.empty()) {
      v.outcome = Outcome::kOtherStatus;
      v.why = "429 without Retry-After: " + Clip(x.body);
      return v;
    }
    v.outcome = Outcome::kRefused429;
    v.why = RefusalMessage(x.body);
    v.body = x.body;
    v.retry_after_s = std::clamp(std::atoi(it->second.c_str()), 0, kMaxRetryAfterS);
    return v;
  }
  if (x.status == 503) {
    v.outcome = Outcome::kRefused503;
    v.why = RefusalMessage(x.body);
    v.body = x.body;
    return v;
  }
  if (x.status != 200) {
    v.outcome = Outcome::kOtherStatus;
    v.why = "HTTP " + std::to_string(x.status) + ": " + Clip(x.body);
    return v;
  }
  v = rq.stream ? CheckStream(rq, x) : CheckWhole(rq, x);
  if (v.outcome == Outcome::kSuccess && rq.max_tokens > 0 && v.tokens > rq.max_tokens) {
    v.outcome = Outcome::kBadAnswer;
    v.why = "completion_tokens " + std::to_string(v.tokens) + " > max_tokens " +
            std::to_string(rq.max_tokens);
  }
  return v;
}

}  // namespace pipeinfer::soak
