// The draft service's link to its pipeline: ONE Pipeline stream to stage 0 and ONE Results stream
// from the last stage, shared by every session. Private to the draft_server library (it includes
// gRPC).
//
//   * a sender thread writes queued StageDownstream messages to stage 0 as credits allow (a message
//     is queued, never dropped, while the link is out of credit); run ids are assigned when a
//     message is queued, so they increase along the stream; with nothing to send for a quarter of
//     the stages' ownership lease it sends a keepalive Barrier (stage.proto section 2a);
//   * a pipeline reader takes Credit, Cancel, ErrorDetail and PipelineReady messages from stage 0;
//     an ErrorDetail naming a session fails that session; PipelineReady (right after the first
//     credit) gives every stage's KV capacity, which an epoch waits for before it is used;
//   * a results reader dispatches each RunResult / Tombstone to its session's inbox by session_id
//     (each session sees exactly one outcome per run, in sending order);
//   * a supervisor reconnects with a new epoch when a link fails (retrying after 100 ms, doubling
//     up to 2 s): the sessions of the lost epoch fail with ABORTED and report lost(), OpenSession
//     fails with UNAVAILABLE until the pipeline is back. A Generate call whose session was lost
//     resumes on a new session of the next epoch (generate_session.h, crash recovery).
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "draft_server/kv_admission.h"
#include "draft_server/session_inbox.h"
#include "draft_server/session_link.h"
#include "pipeinfer/v1/stage.grpc.pb.h"

namespace pipeinfer::draft_server {

struct PipelineLinkOptions {
  std::shared_ptr<grpc::Channel> stage0;  // receives the Pipeline stream
  std::shared_ptr<grpc::Channel> last;    // serves the Results stream
  std::string controller_id;              // for the stages' logs
  std::string model_id;                   // PipelineOpen.model_id
  uint32_t n_stages = 1;                  // PipelineOpen.n_stages
  // Called when the pipeline goes down (false: the current epoch was lost, not by Stop) and when
  // the supervisor brings it back (true). Never called with the link's lock held.
  std::function<void(bool up)> on_state;
  // Called with every stage's KV capacity (PipelineReady) when an epoch becomes current, before
  // any session can open on it (admission accounts against it). Never with the link's lock held.
  std::function<void(const std::vector<StageKv>&)> on_capacity;
  // Benchmarks only (--emulate-link-us): every message to stage 0 leaves this many microseconds
  // after it was queued, and every Cancel to the last stage is sent that late, in order. 0 =
  // inline.
  int64_t emulate_link_us = 0;
  // Benchmarks only (--emulate-link-mbps): each of the two links carries this many Mbit/s; a
  // message leaves only after the previous ones on its link and its own bytes (ByteSizeLong() +
  // framing) have been serialized at this rate, then after emulate_link_us (common/link_pacer.h).
  // 0 = no pacing; with both 0 every send is inline.
  double emulate_link_mbps = 0;
};

class PipelineLink {
 public:
  class Session;

  explicit PipelineLink(PipelineLinkOptions options);
  ~PipelineLink();  // Stop()
  PipelineLink(const PipelineLink&) = delete;
  PipelineLink& operator=(const PipelineLink&) = delete;

  // Opens the first epoch (Results stream, then Pipeline stream, then stage 0's first credit) and
  // starts the supervisor. A refused or timed-out open is retried with the supervisor's backoff
  // (100 ms doubling to 2 s, each attempt waiting at most 5 s) until `deadline`: a draft service
  // that boots while another controller owns stage 0 (stage.proto section 2a) gets the pipeline
  // within the documented bound L + B + S (about 12 s with the defaults), well inside the draft
  // service's --connect-timeout-ms (default 30 s). UNAVAILABLE with the last refusal when the
  // deadline passes first; CANCELLED when BeginShutdown or Stop is called meanwhile.
  absl::Status Start(std::chrono::system_clock::time_point deadline);
  // Refuses new sessions, fails every open one with `status` and reconnects no more.
  void BeginShutdown(const absl::Status& status);
  // BeginShutdown, then stops the supervisor and ends the current epoch's streams (joins every
  // thread). Idempotent.
  void Stop();

  // Opens a session on the current epoch, with a fresh session id (non-zero, increasing).
  // UNAVAILABLE when the pipeline is not connected.
  absl::StatusOr<std::unique_ptr<Session>> OpenSession();

  bool ready() const;      // the current epoch's streams are open
  uint64_t epoch() const;  // the current epoch (0 before the first)

 private:
  struct Epoch;
  struct Registration {
    std::shared_ptr<SessionInbox> inbox;
    std::shared_ptr<Epoch> epoch;
  };

  absl::StatusOr<std::shared_ptr<Epoch>> Connect(std::chrono::system_clock::time_point deadline);
  void SendLoop(std::shared_ptr<Epoch> ep);
  void PipeReadLoop(std::shared_ptr<Epoch> ep);
  void ResultsReadLoop(std::shared_ptr<Epoch> ep);
  // Marks the epoch dead (once): wakes its threads, fails its sessions with ABORTED and lets the
  // supervisor reconnect. A stream that the stage ended itself is not cancelled, so that Finish()
  // returns the stage's status.
  void EpochFailed(const std::shared_ptr<Epoch>& ep, const std::string& reason,
                   bool cancel_pipe = true, bool cancel_results = true);
  // Ends the epoch's streams, joins its threads and returns the streams' final statuses.
  std::pair<grpc::Status, grpc::Status> StopEpoch(const std::shared_ptr<Epoch>& ep);
  void Supervise();
  // The session's inbox, if it is registered on `ep`.
  std::shared_ptr<SessionInbox> InboxOf(uint64_t session_id, const std::shared_ptr<Epoch>& ep);
  void Unregister(uint64_t session_id);

  static bool Enqueue(Epoch& ep, v1::StageDownstream m, uint64_t* run_id);
  static void SendCancel(Epoch& ep, std::span<const uint64_t> run_ids);
  static absl::Status Lost(Epoch& ep);

  PipelineLinkOptions opt_;
  std::unique_ptr<v1::Stage::Stub> stub0_, stub_last_;

  mutable std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  std::shared_ptr<Epoch> current_;
  std::map<uint64_t, Registration> sessions_;
  uint64_t next_session_id_ = 1;
  uint64_t last_epoch_ = 0;
  bool stopping_ = false;
  std::thread supervisor_;
};

// One session's use of the link, bound to the epoch that was current when it opened: when that
// epoch is lost, its inbox receives ABORTED and sending fails with ABORTED. Messages are sent on
// stage 0's Pipeline stream as credit allows; cancels go on the Results stream; Close unregisters
// first, so that later outcomes are dropped.
class PipelineLink::Session final : public SessionLink {
 public:
  ~Session() override;  // unregisters, if Close() did not
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  uint64_t id() const override { return id_; }
  SessionInbox& inbox() override { return *inbox_; }
  absl::StatusOr<uint64_t> Enqueue(v1::StageDownstream m) override;
  void SendCancel(std::span<const uint64_t> run_ids) override;
  uint64_t Close(std::span<const uint64_t> outstanding) override;
  bool lost() const override;

 private:
  friend class PipelineLink;
  Session(PipelineLink* link, uint64_t id, std::shared_ptr<Epoch> epoch,
          std::shared_ptr<SessionInbox> inbox);

  PipelineLink* link_;
  uint64_t id_;
  std::shared_ptr<Epoch> epoch_;
  std::shared_ptr<SessionInbox> inbox_;
  bool registered_ = true;
};

}  // namespace pipeinfer::draft_server
