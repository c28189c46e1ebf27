// The draft services the router balances over: one per pipeline replica (--draft a,b,...). A
// background thread asks every replica for its DraftInfo each check interval; a replica is healthy
// while it answers and its pipeline is connected. New requests go to the healthy replica with the
// fewest of this router's requests running on it, then the clearly (by more than 0.25) least
// reserved KV fraction, equal ones taken in turn; a call that finds its replica UNAVAILABLE ejects
// it at once (until a check succeeds again) and the request moves to another replica if nothing was
// streamed yet. A request stays on its replica. No gRPC include in this header.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "router/router_metrics.h"
#include "rpc/tls.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace pipeinfer::router {

class DraftPool {
 public:
  struct Replica {
    std::string address;
    std::shared_ptr<grpc::Channel> channel;
    std::atomic<bool> healthy{false};
    std::atomic<int> running{0};  // this router's requests on it
    std::atomic<float> kv_reserved_fraction{0};
    RouterMetrics::ReplicaSeries series;
  };

  // Holds one request's place on a replica; releases it when destroyed.
  class Lease {
   public:
    explicit Lease(Replica* r);
    ~Lease();
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Replica& replica() const { return *r_; }

   private:
    Replica* r_;
  };

  // `addresses`: comma-separated HOST:PORT (or gRPC target) list; InvalidArgument when empty or
  // repeated. `tls`: the channels' credentials (rpc/tls.h; empty = plaintext).
  static absl::StatusOr<std::unique_ptr<DraftPool>> Create(const std::string& addresses,
                                                           RouterMetrics& metrics,
                                                           std::chrono::milliseconds interval,
                                                           const rpc::TlsFiles& tls = {});
  ~DraftPool();  // stops the checker

  // Checks every replica once (waiting up to `wait` for one to be healthy), then starts the
  // periodic checks.
  void Start(std::chrono::milliseconds wait);

  // The least-loaded healthy replica that is not in `tried`; null when there is none.
  std::unique_ptr<Lease> Pick(const std::vector<const Replica*>& tried = {});
  // A call found the replica unavailable: no new requests until a check succeeds again.
  void Eject(Replica& r);
  bool AnyHealthy() const;
  size_t size() const { return replicas_.size(); }
  const std::vector<std::unique_ptr<Replica>>& replicas() const { return replicas_; }

 private:
  DraftPool() = default;
  void CheckAll(std::chrono::milliseconds deadline);
  void Loop();

  std::vector<std::unique_ptr<Replica>> replicas_;
  std::chrono::milliseconds interval_{1000};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  size_t next_ = 0;  // where the next Pick starts its scan (guarded by mu_)
  std::thread thread_;
};

}  // namespace pipeinfer::router
