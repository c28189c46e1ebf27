#include "router/stop_matcher.h"

#include <algorithm>

namespace pipeinfer::router {

std::string StopMatcher::Push(const std::string& text, std::string* matched) {
  pending_ += text;
  size_t best = std::string::npos;
  for (const auto& s : stops_) {
    const size_t p = pending_.find(s);
    if (p != std::string::npos && (best == std::string::npos || p < best)) {
      best = p;
      *matched = s;
    }
  }
  if (best != std::string::npos) {
    std::string out = pending_.substr(0, best);
    pending_.clear();
    return out;
  }
  // Hold back the longest suffix that is a proper prefix of a stop sequence.
  size_t hold = 0;
  for (const auto& s : stops_) {
    const size_t max_len = std::min(s.size() - 1, pending_.size());
    for (size_t len = max_len; len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  // Never split a UTF-8 character: the held-back part starts at a character boundary anyway
  // because stop strings are valid UTF-8 and pending_ is valid UTF-8.
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopMatcher::Flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace pipeinfer::router
