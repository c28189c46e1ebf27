// The stage server test's controller side: stubs, stats and info of a stage, and a Controller that
// plays the draft service for one epoch (a Pipeline stream to stage 0, a Results stream from the
// last stage). Used by stage_server_test.cc.
#pragma once

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
#include "grpc/health/v1/health.grpc.pb.h"
#include "pipeinfer/v1/stage.grpc.pb.h"
#include "testing/fixtures.h"
#include "testing/grpc_health.h"
#include "testing/process.h"
#include "testing/service_group.h"
#include "testing/stage_messages.h"

namespace pipeinfer::stage_testing {

using stage::PlainRun;

using Clock = std::chrono::system_clock;

inline std::unique_ptr<v1::Stage::Stub> StubFor(const std::string& addr) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return v1::Stage::NewStub(
      grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args));
}

inline std::map<std::string, double> Stats(v1::Stage::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(Clock::now() + std::chrono::seconds(10));
  v1::StatsRequest req;
  v1::StatsResponse resp;
  std::map<std::string, double> out;
  if (!stub.GetStats(&ctx, req, &resp).ok() || resp.services_size() != 1) return out;
  for (const auto& c : resp.services(0).counters()) out[c.name()] = c.value();
  return out;
}

inline v1::StageInfo Info(v1::Stage::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(Clock::now() + std::chrono::seconds(10));
  v1::StageInfoRequest req;
  v1::StageInfo info;
  EXPECT_TRUE(stub.GetInfo(&ctx, req, &info).ok());
  return info;
}

// The controller's side of one epoch: a Pipeline stream to stage 0 and a Results stream from the
// last stage, each read by its own thread.
class Controller {
 public:
  Controller(const std::string& first, const std::string& last, uint64_t epoch)
      : stub0_(StubFor(first)), stub1_(StubFor(last)) {
    pctx_.set_deadline(Clock::now() + std::chrono::seconds(60));
    rctx_.set_deadline(Clock::now() + std::chrono::seconds(60));
    res_ = stub1_->Results(&rctx_);
    v1::ResultsUpstream ro;
    ro.mutable_open()->set_controller_id("stage_server_test");
    ro.mutable_open()->set_epoch(epoch);
    res_->Write(ro);
    res_reader_ = std::thread([this] {
      v1::ResultsDownstream m;
      while (res_->Read(&m)) {
        std::lock_guard<std::mutex> l(mu_);
        results_.push_back(m);
        cv_.notify_all();
      }
    });
    pipe_ = stub0_->Pipeline(&pctx_);
    v1::StageDownstream po;
    po.mutable_open()->set_controller_id("stage_server_test");
    po.mutable_open()->set_epoch(epoch);
    po.mutable_open()->set_receiver_stage_index(0);
    po.mutable_open()->set_n_stages(2);
    pipe_->Write(po);
    pipe_reader_ = std::thread([this] {
      v1::StageUpstream m;
      while (pipe_->Read(&m)) {
        std::lock_guard<std::mutex> l(mu_);
        if (m.has_credit()) credit_ += m.credit().messages();
        if (m.has_error()) errors_.push_back(m.error());
        if (m.has_cancel()) ++cancels_seen_;
        cv_.notify_all();
      }
      std::lock_guard<std::mutex> l(mu_);
      pipe_ended_ = true;
      cv_.notify_all();
    });
  }

  ~Controller() {
    pctx_.TryCancel();
    rctx_.TryCancel();
    if (pipe_reader_.joinable()) pipe_reader_.join();
    if (res_reader_.joinable()) res_reader_.join();
  }

  // Waits for the initial credit.
  bool WaitCredit() {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, std::chrono::seconds(10), [&] { return credit_ > 0 || pipe_ended_; }) &&
           credit_ > 0;
  }

  bool Send(const v1::StageDownstream& m) {
    {
      std::unique_lock<std::mutex> l(mu_);
      if (!cv_.wait_for(l, std::chrono::seconds(10), [&] { return credit_ > 0; })) return false;
      --credit_;
    }
    return pipe_->Write(m);
  }

  // A Cancel straight to stage 0 on the Pipeline stream (no credit).
  bool CancelAtStage0(const std::vector<uint64_t>& ids) {
    v1::StageDownstream m;
    for (uint64_t id : ids) m.mutable_cancel()->add_run_ids(id);
    return pipe_->Write(m);
  }

  bool Cancel(const std::vector<uint64_t>& ids) {
    v1::ResultsUpstream m;
    for (uint64_t id : ids) m.mutable_cancel()->add_run_ids(id);
    return res_->Write(m);
  }

  std::optional<v1::ResultsDownstream> Next() {
    std::unique_lock<std::mutex> l(mu_);
    if (!cv_.wait_for(l, std::chrono::seconds(10), [&] { return !results_.empty(); })) {
      return std::nullopt;
    }
    v1::ResultsDownstream m = results_.front();
    results_.pop_front();
    return m;
  }

  // Ends both streams gracefully and returns their statuses.
  std::pair<grpc::Status, grpc::Status> Close() {
    pipe_->WritesDone();
    pipe_reader_.join();
    grpc::Status p = pipe_->Finish();
    res_->WritesDone();
    res_reader_.join();
    grpc::Status r = res_->Finish();
    return {p, r};
  }

  std::vector<v1::ErrorDetail> errors() {
    std::lock_guard<std::mutex> l(mu_);
    return errors_;
  }
  // Waits for the Pipeline stream to end (by the stage) and returns its status.
  std::optional<grpc::Status> WaitPipeEnded() {
    {
      std::unique_lock<std::mutex> l(mu_);
      if (!cv_.wait_for(l, std::chrono::seconds(10), [&] { return pipe_ended_; })) {
        return std::nullopt;
      }
    }
    pipe_reader_.join();
    return pipe_->Finish();
  }
  int cancels_seen() {
    std::lock_guard<std::mutex> l(mu_);
    return cancels_seen_;
  }

 private:
  std::unique_ptr<v1::Stage::Stub> stub0_, stub1_;
  grpc::ClientContext pctx_, rctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::StageDownstream, v1::StageUpstream>> pipe_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ResultsUpstream, v1::ResultsDownstream>> res_;
  std::thread pipe_reader_, res_reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t credit_ = 0;
  bool pipe_ended_ = false;
  int cancels_seen_ = 0;
  std::deque<v1::ResultsDownstream> results_;
  std::vector<v1::ErrorDetail> errors_;
};

}  // namespace pipeinfer::stage_testing
