// The generation core shared by both front ends: one Draft.Generate call per request, token
// batches turned into text deltas (incremental detokenizing, UTF-8 safe), text stop sequences
// (text that may start one is held back), and the token-latency metrics. The caller owns the
// grpc::ClientContext, so it can cancel the call (TryCancel) from another thread when its client
// goes away.
#pragma once

#include <memory>
#include <optional>

#include "router/error.h"
#include "router/gen_request.h"

namespace grpc {
class Channel;
class ClientContext;
}  // namespace grpc

namespace pipeinfer::tokenizer {
class Tokenizer;
}  // namespace pipeinfer::tokenizer

namespace pipeinfer::router {

class RouterMetrics;

class Generator {
 public:
  Generator(std::shared_ptr<grpc::Channel> draft, const tokenizer::Tokenizer& tok,
            RouterMetrics& metrics);

  // Runs `g` to the end, a stop sequence, an error or the client going away (sink.on_delta
  // returns false or sink.cancelled() turns true: CANCELLED "the client went away"). Returns
  // nullopt on success (*result filled) or the error; *started tells whether any delta was
  // delivered.
  std::optional<Error> Generate(GenRequest& g, grpc::ClientContext* ctx, const GenSink& sink,
                                GenResult* result, bool* started);

 private:
  std::shared_ptr<grpc::Channel> draft_;
  const tokenizer::Tokenizer& tok_;
  RouterMetrics& metrics_;
};

// The CANCELLED error of a client that went away.
Error ClientGone();

}  // namespace pipeinfer::router
