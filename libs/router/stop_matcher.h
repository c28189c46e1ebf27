// Text stop sequences: finds the earliest stop sequence in generated text and holds back text
// that may be the start of one, so that a client never sees part of a stop sequence.
#pragma once

#include <string>
#include <vector>

namespace pipeinfer::router {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  // Adds text; returns the text that can be sent now. Sets *matched when a stop sequence was
  // found (the returned text then ends right before it, and everything after is dropped).
  std::string Push(const std::string& text, std::string* matched);

  // What is left at the end of the generation.
  std::string Flush();

 private:
  std::vector<std::string> stops_;
  std::string pending_;
};

}  // namespace pipeinfer::router
