// A session's way into the pipeline, as one Generate call's loop (generate_session.h) sees it: send
// its messages, cancel its runs, take its outcomes from its inbox, close it. PipelineLink::Session
// is the real one (one shared Pipeline/Results stream pair); tests use a scripted one. No gRPC.
// Private to the draft_server library.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/statusor.h"
#include "draft_server/session_inbox.h"
#include "pipeinfer/v1/stage.pb.h"

namespace pipeinfer::draft_server {

class SessionLink {
 public:
  virtual ~SessionLink() = default;

  // The session id (in SessionOpen, Run, KvOp and SessionClose; also the draft model's session).
  virtual uint64_t id() const = 0;
  // Where its outcomes (in sending order) or its failure arrive.
  virtual SessionInbox& inbox() = 0;
  // Queues a message for stage 0 behind everything queued before. A Run gets its run id here
  // (ids increase along the stream); returns it (0 for other messages). ABORTED when the pipeline
  // was reset.
  virtual absl::StatusOr<uint64_t> Enqueue(v1::StageDownstream m) = 0;
  // Asks the stages to skip these runs (best effort: their outcomes still arrive).
  virtual void SendCancel(std::span<const uint64_t> run_ids) = 0;
  // Stops delivery, cancels the `outstanding` runs and closes the session on every stage (freeing
  // its KV), unless the pipeline was reset meanwhile. Returns how many runs it cancelled.
  virtual uint64_t Close(std::span<const uint64_t> outstanding) = 0;
  // True once the pipeline incarnation (epoch) this session was opened on is gone (a stage or a
  // link died): its failures are then the pipeline's, not the request's, and the request may be
  // resumed on a new session (generate_session.h, crash recovery).
  virtual bool lost() const { return false; }
};

}  // namespace pipeinfer::draft_server
