// The Draft.Generate call(s) of one request: one grpc::ClientContext per attempt (a request whose
// replica turns out to be unavailable moves to another one), cancellable from any thread at any
// time (the client went away, a stop sequence matched). Router-internal (pulls in grpcpp).
#pragma once

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>

#include <memory>
#include <mutex>

namespace pipeinfer::router {

class DraftCall {
 public:
  // `parent`: the gRPC front end's server context, whose deadline and cancellation every attempt
  // inherits; null over HTTP.
  explicit DraftCall(const grpc::ServerContext* parent = nullptr) : parent_(parent) {}

  // A fresh context for the next attempt (the previous attempt's call has finished); null once
  // the call was cancelled.
  grpc::ClientContext* NewAttempt() {
    std::lock_guard<std::mutex> l(mu_);
    if (cancelled_) return nullptr;
    ctx_ = parent_ ? grpc::ClientContext::FromServerContext(*parent_)
                   : std::make_unique<grpc::ClientContext>();
    return ctx_.get();
  }

  // Cancels the current attempt and refuses later ones. Thread-safe, idempotent.
  void Cancel() {
    std::lock_guard<std::mutex> l(mu_);
    cancelled_ = true;
    if (ctx_) ctx_->TryCancel();
  }

 private:
  std::mutex mu_;
  bool cancelled_ = false;
  const grpc::ServerContext* parent_;
  std::unique_ptr<grpc::ClientContext> ctx_;
};

}  // namespace pipeinfer::router
