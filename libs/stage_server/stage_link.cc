// A Pipeline link of the stage server: opening the downstream stream, the worker that hands the
// queue to StageCore::Step and sends what it produced, the reader of the downstream stream, and
// cancellation.
#include "stage_server/stage_server_impl.h"

namespace pipeinfer::stage_server {

grpc::Status StageServer::Impl::OpenDownstream(Link& link, const v1::PipelineOpen& o) {
  if (!down_channel_->WaitForConnected(Clock::now() +
                                       std::chrono::milliseconds(opt_.connect_timeout_ms))) {
    return Refuse(grpc::StatusCode::UNAVAILABLE,
                  absl::StrCat("cannot connect to the next stage at ", opt_.downstream_address));
  }
  link.down_ctx = std::make_unique<grpc::ClientContext>();
  link.down = down_stub_->Pipeline(link.down_ctx.get());
  v1::StageDownstream open;
  *open.mutable_open() = o;
  open.mutable_open()->set_receiver_stage_index(index() + 1);
  open.mutable_open()->set_hidden_dtype(static_cast<v1::DType>(core_->config().hidden_dtype_out));
  v1::StageUpstream c, r;
  if (!link.down->Write(open) || !link.down->Read(&c) || !c.has_credit() || !link.down->Read(&r) ||
      !r.has_ready()) {
    link.down_ctx->TryCancel();
    grpc::Status s = link.down->Finish();
    link.down.reset();
    return Refuse(grpc::StatusCode::UNAVAILABLE,
                  absl::StrCat("the next stage at ", opt_.downstream_address,
                               " refused the link: ", s.error_message()));
  }
  link.down_credit = c.credit().messages();
  link.down_ready = std::move(*r.mutable_ready());
  return grpc::Status::OK;
}

void StageServer::Impl::AbortLink(Link& link, grpc::StatusCode code, const std::string& why) {
  {
    std::lock_guard<std::mutex> l(link.mu);
    if (link.stop) return;
    link.stop = true;
    link.end_status = grpc::Status(code, why);
  }
  link.cv.notify_all();
  { std::lock_guard<std::mutex> l(mu_); }
  cv_.notify_all();
  {
    std::lock_guard<std::mutex> l(link.up_mu);
    if (!link.up_closed) {
      if (code != grpc::StatusCode::CANCELLED) {
        v1::StageUpstream e;
        v1::ErrorDetail* d = e.mutable_error();
        d->set_code(static_cast<v1::StatusCode>(code));
        d->set_message(why);
        d->set_retryable(code == grpc::StatusCode::UNAVAILABLE ||
                         code == grpc::StatusCode::ABORTED);
        d->set_origin(absl::StrCat("stage/", index()));
        d->set_stage_index(index());
        (void)link.up->Write(e);
      }
      link.ctx->TryCancel();
    }
  }
  if (link.down_ctx) link.down_ctx->TryCancel();
}

void StageServer::Impl::HandleCancel(const v1::Cancel& c, Link* link) {
  cancels_received_->Increment();
  if (index() > 0) {
    std::shared_ptr<Link> cur;
    if (!link) {
      std::lock_guard<std::mutex> l(mu_);
      cur = current_;
      link = cur.get();
    }
    if (link) {
      v1::StageUpstream u;
      *u.mutable_cancel() = c;
      (void)link->WriteUp(u);
    }
  }
  core_->Cancel(std::vector<uint64_t>(c.run_ids().begin(), c.run_ids().end()));
}

void StageServer::Impl::Worker(std::shared_ptr<Link> link) {
  Link& l = *link;
  const size_t window = opt_.window;
  std::deque<stage::QueuedMessage> work;
  while (!l.stop) {
    {
      std::unique_lock<std::mutex> lk(l.mu);
      l.cv.wait(lk, [&] { return l.stop || !l.input.empty() || l.input_closed; });
      if (l.stop || l.input.empty()) break;
      // Everything queued is a candidate for this forward pass.
      l.held = l.input.size();
      work.swap(l.input);
    }
    size_t taken = 0;
    stage::StageOutput out;
    {
      std::lock_guard<std::mutex> lk(core_mu_);
      if (!l.stop) out = core_->Step(work, &taken);
    }
    {
      // What the pass left goes back in front of what arrived meanwhile, in order.
      std::lock_guard<std::mutex> lk(l.mu);
      while (!work.empty()) {
        l.input.push_front(std::move(work.back()));
        work.pop_back();
      }
      l.held = 0;
      queue_depth_->Set(static_cast<double>(l.input.size()));
    }
    if (l.stop) break;
    if (taken > 0) {
      v1::StageUpstream credit;
      credit.mutable_credit()->set_messages(static_cast<uint32_t>(taken));
      (void)l.WriteUp(credit);
    }
    for (auto& e : out.errors) {
      v1::StageUpstream u;
      *u.mutable_error() = *e;
      (void)l.WriteUp(u);
    }
    for (auto& f : out.forward) {
      {
        std::unique_lock<std::mutex> lk(l.mu);
        l.cv.wait(lk, [&] { return l.stop || l.down_credit > 0; });
        if (l.stop) break;
        --l.down_credit;
      }
      const size_t bytes = f->ByteSizeLong();
      sent_bytes_->Increment(static_cast<double>(bytes));
      if (l.down_line) {
        std::shared_ptr<v1::StageDownstream> m(std::move(f));
        l.down_line->Post(
            [this, &l, m] {
              if (l.stop) return;
              if (!l.down->Write(*m)) {
                AbortLink(l, grpc::StatusCode::UNAVAILABLE,
                          absl::StrCat("the link to the next stage at ", opt_.downstream_address,
                                       " failed"));
              }
            },
            bytes);
        continue;
      }
      if (!l.down->Write(*f)) {
        AbortLink(
            l, grpc::StatusCode::UNAVAILABLE,
            absl::StrCat("the link to the next stage at ", opt_.downstream_address, " failed"));
        break;
      }
    }
    if (!out.results.empty()) {
      std::unique_lock<std::mutex> lk(mu_);
      for (auto& r : out.results) {
        cv_.wait(lk, [&] { return l.stop || shutdown_ || results_.size() < window; });
        if (l.stop || shutdown_) break;
        const size_t bytes = r->ByteSizeLong();
        sent_bytes_->Increment(static_cast<double>(bytes));
        results_.push_back(std::move(r));
        if (emulate_link()) {
          results_at_.push_back(results_pacer_.Release(std::chrono::steady_clock::now(), bytes) +
                                std::chrono::microseconds(opt_.emulate_link_us));
        }
      }
      lk.unlock();
      cv_.notify_all();
    }
  }
  {
    std::lock_guard<std::mutex> lk(l.mu);
    l.worker_done = true;
  }
  l.cv.notify_all();
}

void StageServer::Impl::DownReader(std::shared_ptr<Link> link) {
  Link& l = *link;
  v1::StageUpstream m;
  while (l.down->Read(&m)) {
    switch (m.msg_case()) {
      case v1::StageUpstream::kCancel:
        HandleCancel(m.cancel(), &l);
        break;
      case v1::StageUpstream::kCredit: {
        {
          std::lock_guard<std::mutex> lk(l.mu);
          l.down_credit += m.credit().messages();
        }
        l.cv.notify_all();
        break;
      }
      case v1::StageUpstream::kError:
        (void)l.WriteUp(m);
        break;
      case v1::StageUpstream::kReady:
        break;  // only expected once, right after the initial credit (read by OpenDownstream)
      default:
        break;
    }
  }
  bool expected = false;
  {
    std::lock_guard<std::mutex> lk(l.mu);
    expected = l.stop || l.closing;
  }
  if (!expected) {
    AbortLink(l, grpc::StatusCode::UNAVAILABLE,
              absl::StrCat("the link to the next stage at ", opt_.downstream_address, " ended"));
  }
}

}  // namespace pipeinfer::stage_server
