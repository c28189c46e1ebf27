// The generation core shared by both front ends: one Draft.Generate call per request on a
// replica of the DraftPool (moved to another replica when its replica is unavailable before
// anything was streamed), token batches turned into text deltas (incremental detokenizing, UTF-8
// safe), text stop sequences (text that may start one is held back), and the token-latency
// metrics. The caller owns the DraftCall, so it can cancel the call from another thread when its
// client goes away.
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

class DraftCall;
class DraftPool;
class RouterMetrics;

class Generator {
 public:
  Generator(DraftPool& pool, const tokenizer::Tokenizer& tok, RouterMetrics& metrics);

  // Runs `g` to the end, a stop sequence, an error or the client going away (sink.on_delta
  // returns false or sink.cancelled() turns true: CANCELLED "the client went away"). Returns
  // nullopt on success (*result filled) or the error; *started tells whether any delta was
  // delivered. Sets g.ttft_s at the first token. UNAVAILABLE when no replica is serving.
  std::optional<Error> Generate(GenRequest& g, DraftCall& call, const GenSink& sink,
                                GenResult* result, bool* started);

 private:
  // One attempt on one replica; *retry is set when the replica was unavailable before anything
  // was delivered (the request may move to another replica).
  std::optional<Error> Attempt(GenRequest& g, grpc::ClientContext* ctx,
                               const std::shared_ptr<grpc::Channel>& channel, const GenSink& sink,
                               GenResult* result, bool* started, bool* retry);

  DraftPool& pool_;
  const tokenizer::Tokenizer& tok_;
  RouterMetrics& metrics_;
};

// The CANCELLED error of a client that went away.
Error ClientGone();

}  // namespace pipeinfer::router
