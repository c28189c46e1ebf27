// Validation and tokenization shared by both front ends: model name, request id, chat template
// rendering, prompt text bound, stop sequences, sampling parameters and the context limit. Each
// check returns the Error to report, or nullopt.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "chat/model_template.h"
#include "router/error.h"
#include "router/gen_request.h"
#include "router/served_model.h"

namespace pipeinfer::v1 {
class GenerationOptions;
}  // namespace pipeinfer::v1

namespace pipeinfer::router {

class RequestBuilder {
 public:
  // `max_prompt_bytes`: the prompt text bound (0 = none); `explicit_bound`: it was set by
  // --max-prompt-chars rather than derived from the context (for the error message).
  RequestBuilder(const ServedModel& model, uint32_t n_ctx, size_t max_prompt_bytes,
                 bool explicit_bound);

  const ServedModel& model() const { return model_; }
  uint32_t n_ctx() const { return n_ctx_; }
  size_t max_prompt_bytes() const { return max_prompt_bytes_; }

  // NOT_FOUND unless `model` is empty or the served id.
  std::optional<Error> CheckModel(const std::string& model) const;
  // Printable ASCII, at most 128 characters; empty = a random "req-..." id.
  std::optional<Error> SetRequestId(const std::string& id, GenRequest* g) const;
  // Renders the messages with the served template (or `template_name`), checks the text bound
  // and tokenizes; sets the template's stop strings.
  std::optional<Error> BuildChat(const std::vector<chat::ChatMessage>& msgs,
                                 const std::string& template_name, GenRequest* g) const;
  // A raw text prompt: UTF-8 check, text bound, then tokenized into g->prompt.
  std::optional<Error> EncodePrompt(const std::string& text, bool add_bos, bool parse_special,
                                    GenRequest* g) const;
  std::optional<Error> AddStops(const std::vector<std::string>& stops, GenRequest* g) const;
  std::optional<Error> CheckSampling(const v1::SamplingParams& p) const;
  // gRPC GenerationOptions -> g (max_tokens beyond the context is refused by CheckContext).
  std::optional<Error> FromOptions(const v1::GenerationOptions& o, GenRequest* g) const;
  // The context limit; fills max_tokens when absent.
  std::optional<Error> CheckContext(GenRequest* g) const;

 private:
  // OUT_OF_RANGE "context_length_exceeded" when `bytes` of prompt text cannot fit.
  std::optional<Error> CheckPromptBytes(size_t bytes, const char* param) const;

  const ServedModel& model_;
  const uint32_t n_ctx_;
  const size_t max_prompt_bytes_;
  const bool explicit_bound_;
};

// prefix + 16 random hex digits.
std::string RandomId(const char* prefix);

}  // namespace pipeinfer::router
