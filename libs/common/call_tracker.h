// Counts the calls in progress in an object (gRPC service handlers running on gRPC's threads) so
// that its destructor can wait until none of them touches its members any more.
//
// grpc::Server::Shutdown()/Wait() already return only after every handler has returned, but they
// order that through gRPC's own synchronisation, which ThreadSanitizer cannot see in Debian's
// uninstrumented gRPC: without this, TSan reports each member a handler touched last (a
// condition variable it notified, a mutex it unlocked) as racing with the destructor. The tracker
// makes the ordering explicit with a mutex of ours, and it does not depend on gRPC's behaviour.
//
//   grpc::Status Impl::Pipeline(...) { auto call = calls_.Enter(); ... }
//   Impl::~Impl() { Shutdown(); server_->Wait(); calls_.WaitIdle(); }
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>

namespace pipeinfer {

class CallTracker {
 public:
  // One call in progress, from Enter() until it goes out of scope. Declare it first in the
  // handler, so that it ends after everything else the handler does.
  class [[nodiscard]] Scope {
   public:
    explicit Scope(CallTracker* t) : t_(t) {
      std::lock_guard<std::mutex> l(t_->mu_);
      ++t_->active_;
    }
    ~Scope() {
      if (!t_) return;
      // Notified under the lock: once WaitIdle() sees zero, no Scope touches the tracker again.
      std::lock_guard<std::mutex> l(t_->mu_);
      if (--t_->active_ == 0) t_->idle_.notify_all();
    }
    Scope(Scope&& o) noexcept : t_(o.t_) { o.t_ = nullptr; }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    Scope& operator=(Scope&&) = delete;

   private:
    CallTracker* t_;
  };

  Scope Enter() { return Scope(this); }

  // Blocks until no Scope is alive; everything the ended calls did happens before the return.
  void WaitIdle() {
    std::unique_lock<std::mutex> l(mu_);
    idle_.wait(l, [&] { return active_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable idle_;
  size_t active_ = 0;
};

}  // namespace pipeinfer
