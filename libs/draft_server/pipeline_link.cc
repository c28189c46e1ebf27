#include "draft_server/pipeline_link.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <deque>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/delay_line.h"
#include "common/link_pacer.h"
#include "draft_server/pipeline_proto.h"

namespace pipeinfer::draft_server {
namespace {

using Clock = std::chrono::system_clock;
using PipeStream = grpc::ClientReaderWriter<v1::StageDownstream, v1::StageUpstream>;
using ResStream = grpc::ClientReaderWriter<v1::ResultsUpstream, v1::ResultsDownstream>;

// Opening the pipeline, at start and on reconnects: a restarted stage is usually back within a
// second or two, and the requests waiting to resume (crash recovery) should not wait much longer
// than that; B = kMaxRetry in the ownership bound of stage.proto section 2a.
constexpr std::chrono::milliseconds kFirstRetry{100}, kMaxRetry{2000};
constexpr std::chrono::seconds kAttempt{5};  // one open waits this long for stage 0's credit

}  // namespace

// One incarnation (epoch) of the pipeline: the Pipeline stream to stage 0 and the Results stream
// from the last stage, with their threads.
struct PipelineLink::Epoch {
  uint64_t epoch = 0;
  uint32_t n_stages = 1;
  std::unique_ptr<grpc::ClientContext> pctx, rctx;
  std::unique_ptr<PipeStream> pipe;
  std::unique_ptr<ResStream> res;

  std::mutex mu;  // guards the fields below (dead is also readable without it)
  std::condition_variable cv;
  int64_t credit = 0;
  bool got_credit = false;
  bool got_ready = false;
  std::vector<StageKv> capacity;        // from PipelineReady, stage order
  std::deque<v1::StageDownstream> out;  // waiting for credit
  // Emulated link (latency and/or rate; `emulate` false: none): when each message of `out` may
  // leave, i.e. the end of its transmission on the link to stage 0 (`pacer`, in queueing order)
  // plus the latency.
  bool emulate = false;
  std::chrono::microseconds link_delay{0};
  LinkPacer pacer{0};
  std::deque<std::chrono::steady_clock::time_point> out_at;
  uint64_t next_run_id = 1;
  int64_t runs_in_flight = 0;  // sent and not yet answered (for Run.pipeline_runs)
  // Keepalive (stage.proto section 2a): a Barrier when nothing was sent for a quarter of the
  // shortest ownership lease of the stages (zero: none of them releases an idle link).
  std::chrono::steady_clock::duration keepalive{0};
  std::chrono::steady_clock::time_point last_sent = std::chrono::steady_clock::now();
  uint64_t keepalives = 0;
  std::atomic<bool> dead{false};
  std::string dead_reason;

  std::mutex res_write_mu;  // serializes writes on the Results stream
  std::thread sender, pipe_reader, res_reader;
  std::unique_ptr<DelayLine> cancel_line;  // emulated link of Cancels; null without
};

PipelineLink::PipelineLink(PipelineLinkOptions options)
    : opt_(std::move(options)),
      stub0_(v1::Stage::NewStub(opt_.stage0)),
      stub_last_(v1::Stage::NewStub(opt_.last)) {}

PipelineLink::~PipelineLink() { Stop(); }

absl::Status PipelineLink::Start(Clock::time_point deadline) {
  std::chrono::milliseconds backoff = kFirstRetry;
  absl::StatusOr<std::shared_ptr<Epoch>> ep = Connect(std::min(deadline, Clock::now() + kAttempt));
  while (!ep.ok()) {
    // Retried like a reconnect (Supervise): the owner of stage 0 may be another controller for up
    // to the ownership bound of stage.proto section 2a, and the stages may still be starting.
    const auto retry_at = Clock::now() + backoff;
    if (retry_at >= deadline) return ep.status();
    spdlog::warn("opening the pipeline: {}; retrying in {} ms", std::string(ep.status().message()),
                 backoff.count());
    {
      std::unique_lock<std::mutex> l(mu_);
      if (cv_.wait_until(l, retry_at, [&] { return stopping_; })) {
        return absl::CancelledError("the pipeline link was stopped while opening the pipeline");
      }
    }
    backoff = std::min(backoff * 2, kMaxRetry);
    ep = Connect(std::min(deadline, Clock::now() + kAttempt));
  }
  if (opt_.on_capacity) opt_.on_capacity((*ep)->capacity);
  std::lock_guard<std::mutex> l(mu_);
  current_ = *ep;
  supervisor_ = std::thread([this] { Supervise(); });
  return absl::OkStatus();
}

void PipelineLink::BeginShutdown(const absl::Status& status) {
  std::vector<std::shared_ptr<SessionInbox>> open;
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
    for (auto& [id, reg] : sessions_) open.push_back(reg.inbox);
  }
  cv_.notify_all();
  for (auto& inbox : open) inbox->Fail(status);
}

void PipelineLink::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (supervisor_.joinable()) supervisor_.join();
  std::shared_ptr<Epoch> ep;
  {
    std::lock_guard<std::mutex> l(mu_);
    ep = std::move(current_);
  }
  if (ep) StopEpoch(ep);
}

absl::StatusOr<std::unique_ptr<PipelineLink::Session>> PipelineLink::OpenSession() {
  std::lock_guard<std::mutex> l(mu_);
  if (stopping_) return absl::UnavailableError("the pipeline link is shutting down");
  if (!current_ || current_->dead) return absl::UnavailableError("the pipeline is not connected");
  const uint64_t id = next_session_id_++;
  auto inbox = std::make_shared<SessionInbox>();
  sessions_[id] = Registration{inbox, current_};
  return std::unique_ptr<Session>(new Session(this, id, current_, std::move(inbox)));
}

bool PipelineLink::ready() const {
  std::lock_guard<std::mutex> l(mu_);
  return current_ && !current_->dead;
}

uint64_t PipelineLink::epoch() const {
  std::lock_guard<std::mutex> l(mu_);
  return current_ ? current_->epoch : 0;
}

std::shared_ptr<SessionInbox> PipelineLink::InboxOf(uint64_t session_id,
                                                    const std::shared_ptr<Epoch>& ep) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = sessions_.find(session_id);
  if (it == sessions_.end() || it->second.epoch != ep) return nullptr;
  return it->second.inbox;
}

void PipelineLink::Unregister(uint64_t session_id) {
  std::lock_guard<std::mutex> l(mu_);
  sessions_.erase(session_id);
}

// ---- Sending ------------------------------------------------------------------------------------

bool PipelineLink::Enqueue(Epoch& ep, v1::StageDownstream m, uint64_t* run_id) {
  {
    std::lock_guard<std::mutex> l(ep.mu);
    if (ep.dead) return false;
    if (m.has_run()) {
      const uint64_t id = ep.next_run_id++;
      m.mutable_run()->set_run_id(id);
      m.mutable_run()->set_pipeline_runs(static_cast<uint32_t>(++ep.runs_in_flight));
      if (run_id) *run_id = id;
    }
    if (ep.emulate) {
      const size_t bytes = ep.pacer.pacing() ? m.ByteSizeLong() : 0;
      ep.out_at.push_back(ep.pacer.Release(std::chrono::steady_clock::now(), bytes) +
                          ep.link_delay);
    }
    ep.out.push_back(std::move(m));
  }
  ep.cv.notify_all();
  return true;
}

void PipelineLink::SendCancel(Epoch& ep, std::span<const uint64_t> run_ids) {
  if (run_ids.empty()) return;
  v1::ResultsUpstream c;
  for (uint64_t id : run_ids) c.mutable_cancel()->add_run_ids(id);
  // Stage 0 also gets it straight away on the Pipeline stream (stage.proto section 6): it is the
  // stage that would otherwise hear last, while the run that replaces the cancelled ones waits
  // behind its pass. The Results-stream copy climbs from the last stage to the others.
  if (ep.n_stages > 1) {
    v1::StageDownstream d;
    *d.mutable_cancel() = c.cancel();
    (void)Enqueue(ep, std::move(d), nullptr);
  }
  if (ep.cancel_line) {
    Epoch* e = &ep;  // the line is discarded before the epoch's streams end (StopEpoch)
    ep.cancel_line->Post(
        [e, c] {
          std::lock_guard<std::mutex> l(e->res_write_mu);
          if (!e->dead) e->res->Write(c);
        },
        c.ByteSizeLong());
    return;
  }
  std::lock_guard<std::mutex> l(ep.res_write_mu);
  if (!ep.dead) ep.res->Write(c);
}

absl::Status PipelineLink::Lost(Epoch& ep) {
  std::lock_guard<std::mutex> l(ep.mu);
  return absl::AbortedError(absl::StrCat("the pipeline was reset while the request was in flight",
                                         ep.dead_reason.empty() ? "" : " (", ep.dead_reason,
                                         ep.dead_reason.empty() ? "" : ")"));
}

// ---- Epochs -------------------------------------------------------------------------------------

absl::StatusOr<std::shared_ptr<PipelineLink::Epoch>> PipelineLink::Connect(
    Clock::time_point deadline) {
  auto ep = std::make_shared<Epoch>();
  ep->n_stages = opt_.n_stages;
  {
    // Epochs are microseconds since 1970, strictly increasing even if the clock steps back.
    std::lock_guard<std::mutex> l(mu_);
    const uint64_t now_us = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now().time_since_epoch())
            .count());
    ep->epoch = std::max(now_us, last_epoch_ + 1);
    last_epoch_ = ep->epoch;
  }
  if (opt_.emulate_link_us > 0 || opt_.emulate_link_mbps > 0) {
    ep->emulate = true;
    ep->link_delay = std::chrono::microseconds(opt_.emulate_link_us);
    ep->pacer = LinkPacer(opt_.emulate_link_mbps);
    ep->cancel_line = std::make_unique<DelayLine>(ep->link_delay, opt_.emulate_link_mbps);
  }
  ep->rctx = std::make_unique<grpc::ClientContext>();
  ep->pctx = std::make_unique<grpc::ClientContext>();
  ep->res = stub_last_->Results(ep->rctx.get());
  v1::ResultsUpstream ro;
  ro.mutable_open()->set_controller_id(opt_.controller_id);
  ro.mutable_open()->set_epoch(ep->epoch);
  const bool res_ok = ep->res->Write(ro);
  ep->pipe = stub0_->Pipeline(ep->pctx.get());
  v1::StageDownstream po;
  po.mutable_open()->set_controller_id(opt_.controller_id);
  po.mutable_open()->set_epoch(ep->epoch);
  po.mutable_open()->set_receiver_stage_index(0);
  po.mutable_open()->set_n_stages(opt_.n_stages);
  po.mutable_open()->set_model_id(opt_.model_id);
  const bool pipe_ok = res_ok && ep->pipe->Write(po);

  ep->res_reader = std::thread([this, ep] { ResultsReadLoop(ep); });
  ep->pipe_reader = std::thread([this, ep] { PipeReadLoop(ep); });
  ep->sender = std::thread([this, ep] { SendLoop(ep); });
  if (!pipe_ok) EpochFailed(ep, "cannot open the streams");
  bool ok = false;
  {
    std::unique_lock<std::mutex> l(ep->mu);
    ep->cv.wait_until(l, deadline,
                      [&] { return (ep->got_credit && ep->got_ready) || ep->dead.load(); });
    ok = ep->got_credit && ep->got_ready && !ep->dead;
  }
  if (ok) return ep;
  auto [ps, rs] = StopEpoch(ep);
  std::string why =
      !ps.ok()   ? absl::StrCat("stage 0 refused the Pipeline stream: ", ps.error_message())
      : !rs.ok() ? absl::StrCat("the last stage refused the Results stream: ", rs.error_message())
                 : std::string("timed out waiting for stage 0's first credit and capacities");
  return absl::UnavailableError(
      absl::StrCat("cannot open the pipeline (epoch ", ep->epoch, "): ", why));
}

void PipelineLink::SendLoop(std::shared_ptr<Epoch> ep) {
  while (true) {
    v1::StageDownstream m;
    {
      std::unique_lock<std::mutex> l(ep->mu);
      // A Cancel needs no credit (stage.proto section 7); it still keeps its place in the queue.
      while (!ep->dead && (ep->out.empty() || (ep->credit <= 0 && !ep->out.front().has_cancel()))) {
        const auto now = std::chrono::steady_clock::now();
        const bool can_keepalive = ep->keepalive.count() > 0 && ep->out.empty() && ep->credit > 0;
        if (can_keepalive && now - ep->last_sent >= ep->keepalive) {
          v1::StageDownstream b;
          b.mutable_barrier()->set_barrier_id(++ep->keepalives);
          if (ep->emulate) ep->out_at.push_back(now);
          ep->out.push_back(std::move(b));
          break;
        }
        if (can_keepalive) {
          ep->cv.wait_until(l, ep->last_sent + ep->keepalive);
        } else {
          ep->cv.wait(l);
        }
      }
      if (ep->dead) return;
      if (ep->emulate) {
        const auto due = ep->out_at.front();
        if (std::chrono::steady_clock::now() < due) {
          ep->cv.wait_until(l, due, [&] { return ep->dead.load(); });
          continue;
        }
        ep->out_at.pop_front();
      }
      m = std::move(ep->out.front());
      ep->out.pop_front();
      if (!m.has_cancel()) --ep->credit;
      ep->last_sent = std::chrono::steady_clock::now();
    }
    if (!ep->pipe->Write(m)) {
      EpochFailed(ep, "writing to stage 0 failed");
      return;
    }
  }
}

void PipelineLink::PipeReadLoop(std::shared_ptr<Epoch> ep) {
  v1::StageUpstream m;
  while (ep->pipe->Read(&m)) {
    if (m.has_credit()) {
      {
        std::lock_guard<std::mutex> l(ep->mu);
        ep->credit += m.credit().messages();
        ep->got_credit = true;
      }
      ep->cv.notify_all();
    } else if (m.has_ready()) {
      {
        std::lock_guard<std::mutex> l(ep->mu);
        ep->capacity.clear();
        for (const v1::StageCapacity& c : m.ready().stages()) {
          ep->capacity.push_back({c.stage_index(), c.kv_block_size(), c.kv_blocks_total()});
          const auto lease = std::chrono::milliseconds(c.owner_lease_ms());
          if (lease.count() > 0 && (ep->keepalive.count() == 0 || lease / 4 < ep->keepalive)) {
            ep->keepalive = lease / 4;
          }
        }
        ep->got_ready = true;
      }
      ep->cv.notify_all();
    } else if (m.has_error()) {
      const v1::ErrorDetail& e = m.error();
      if (e.session_id() == 0) {
        spdlog::error("pipeline error: {}", e.ShortDebugString());
      } else if (std::shared_ptr<SessionInbox> inbox = InboxOf(e.session_id(), ep)) {
        inbox->Fail(StatusFromDetail(e));
      }
    }
    // Cancel: stage 0 never forwards cancels to the controller; nothing to do.
  }
  EpochFailed(ep, "the Pipeline stream to stage 0 ended", /*cancel_pipe=*/false);
}

void PipelineLink::ResultsReadLoop(std::shared_ptr<Epoch> ep) {
  v1::ResultsDownstream m;
  while (ep->res->Read(&m)) {
    const uint64_t sid = m.has_result()      ? m.result().session_id()
                         : m.has_tombstone() ? m.tombstone().session_id()
                                             : 0;
    if (sid == 0) continue;  // barrier echoes
    {
      std::lock_guard<std::mutex> l(ep->mu);
      if (ep->runs_in_flight > 0) --ep->runs_in_flight;
    }
    // A finished session's late outcome has no inbox any more.
    if (std::shared_ptr<SessionInbox> inbox = InboxOf(sid, ep)) inbox->Deliver(std::move(m));
    m.Clear();
  }
  EpochFailed(ep, "the Results stream from the last stage ended", /*cancel_pipe=*/true,
              /*cancel_results=*/false);
}

void PipelineLink::EpochFailed(const std::shared_ptr<Epoch>& ep, const std::string& reason,
                               bool cancel_pipe, bool cancel_results) {
  {
    std::lock_guard<std::mutex> l(ep->mu);
    if (ep->dead) return;
    ep->dead_reason = reason;
    ep->dead = true;
  }
  ep->cv.notify_all();
  if (cancel_pipe) ep->pctx->TryCancel();
  if (cancel_results) ep->rctx->TryCancel();
  std::vector<std::shared_ptr<SessionInbox>> victims;
  bool current = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [id, reg] : sessions_) {
      if (reg.epoch == ep) victims.push_back(reg.inbox);
    }
    current = current_ == ep && !stopping_;
  }
  for (auto& inbox : victims) {
    inbox->Fail(absl::AbortedError(
        absl::StrCat("the pipeline was reset while the request was in flight (", reason, ")")));
  }
  if (current) {
    spdlog::warn("pipeline epoch {} lost: {}", ep->epoch, reason);
    if (opt_.on_state) opt_.on_state(false);
  }
  cv_.notify_all();
}

std::pair<grpc::Status, grpc::Status> PipelineLink::StopEpoch(const std::shared_ptr<Epoch>& ep) {
  EpochFailed(ep, "stopped");
  if (ep->cancel_line) ep->cancel_line->Discard();
  if (ep->sender.joinable()) ep->sender.join();
  if (ep->pipe_reader.joinable()) ep->pipe_reader.join();
  if (ep->res_reader.joinable()) ep->res_reader.join();
  grpc::Status ps = ep->pipe ? ep->pipe->Finish() : grpc::Status::OK;
  grpc::Status rs = ep->res ? ep->res->Finish() : grpc::Status::OK;
  return {ps, rs};
}

void PipelineLink::Supervise() {
  std::chrono::milliseconds backoff = kFirstRetry;
  std::unique_lock<std::mutex> l(mu_);
  while (!stopping_) {
    cv_.wait_for(l, std::chrono::seconds(1),
                 [&] { return stopping_ || !current_ || current_->dead.load(); });
    if (stopping_) break;
    if (current_ && !current_->dead) continue;
    std::shared_ptr<Epoch> old = std::move(current_);
    l.unlock();
    if (old) {
      auto [ps, rs] = StopEpoch(old);
      spdlog::info("epoch {} ended (Pipeline: {}; Results: {})", old->epoch, ps.error_message(),
                   rs.error_message());
    }
    auto fresh = Connect(Clock::now() + kAttempt);
    l.lock();
    if (!fresh.ok()) {
      spdlog::warn("reconnecting: {}", std::string(fresh.status().message()));
      cv_.wait_for(l, backoff, [&] { return stopping_; });
      backoff = std::min(backoff * 2, kMaxRetry);
      continue;
    }
    backoff = kFirstRetry;
    if (stopping_) {
      l.unlock();
      StopEpoch(*fresh);
      l.lock();
      break;
    }
    l.unlock();
    if (opt_.on_capacity) opt_.on_capacity((*fresh)->capacity);
    l.lock();
    current_ = *fresh;
    spdlog::info("pipeline reconnected with epoch {}", current_->epoch);
    l.unlock();
    if (opt_.on_state) opt_.on_state(true);
    l.lock();
  }
}

// ---- Session ------------------------------------------------------------------------------------

PipelineLink::Session::Session(PipelineLink* link, uint64_t id, std::shared_ptr<Epoch> epoch,
                               std::shared_ptr<SessionInbox> inbox)
    : link_(link), id_(id), epoch_(std::move(epoch)), inbox_(std::move(inbox)) {}

PipelineLink::Session::~Session() {
  if (registered_) link_->Unregister(id_);
}

absl::StatusOr<uint64_t> PipelineLink::Session::Enqueue(v1::StageDownstream m) {
  uint64_t run_id = 0;
  if (!PipelineLink::Enqueue(*epoch_, std::move(m), &run_id)) return Lost(*epoch_);
  return run_id;
}

bool PipelineLink::Session::lost() const { return epoch_->dead.load(); }

void PipelineLink::Session::SendCancel(std::span<const uint64_t> run_ids) {
  PipelineLink::SendCancel(*epoch_, run_ids);
}

uint64_t PipelineLink::Session::Close(std::span<const uint64_t> outstanding) {
  if (registered_) link_->Unregister(id_);
  registered_ = false;
  if (epoch_->dead) return 0;
  SendCancel(outstanding);
  v1::StageDownstream close;
  close.mutable_session_close()->set_session_id(id_);
  PipelineLink::Enqueue(*epoch_, std::move(close), nullptr);
  return outstanding.size();
}

}  // namespace pipeinfer::draft_server
