#include "router/draft_pool.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <future>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "pipeinfer/v1/draft.grpc.pb.h"
#include "rpc/credentials.h"

namespace pipeinfer::router {

DraftPool::Lease::Lease(Replica* r) : r_(r) {
  r_->series.running->Set(static_cast<double>(++r_->running));
  r_->series.requests->Increment();
}

DraftPool::Lease::~Lease() { r_->series.running->Set(static_cast<double>(--r_->running)); }

absl::StatusOr<std::unique_ptr<DraftPool>> DraftPool::Create(const std::string& addresses,
                                                             RouterMetrics& metrics,
                                                             std::chrono::milliseconds interval,
                                                             const rpc::TlsFiles& tls) {
  auto creds = rpc::MakeChannelCredentials(tls);
  if (!creds.ok()) return creds.status();
  std::unique_ptr<DraftPool> pool(new DraftPool());
  pool->interval_ = interval;
  std::set<std::string> seen;
  for (absl::string_view part : absl::StrSplit(addresses, ',')) {
    const std::string a(absl::StripAsciiWhitespace(part));
    if (a.empty()) continue;
    if (!seen.insert(a).second) {
      return absl::InvalidArgumentError(absl::StrCat("--draft lists ", a, " twice"));
    }
    auto r = std::make_unique<Replica>();
    r->address = a;
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    r->channel = grpc::CreateCustomChannel(a, *creds, args);
    r->series = metrics.Replica(a);
    r->series.healthy->Set(0);
    r->series.running->Set(0);
    pool->replicas_.push_back(std::move(r));
  }
  if (pool->replicas_.empty()) {
    return absl::InvalidArgumentError("--draft needs at least one HOST:PORT");
  }
  return pool;
}

DraftPool::~DraftPool() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void DraftPool::CheckAll(std::chrono::milliseconds deadline) {
  // In parallel: one replica that does not answer must not delay the others' verdicts.
  std::vector<std::future<void>> checks;
  for (const auto& rp : replicas_) {
    Replica* r = rp.get();
    checks.push_back(std::async(std::launch::async, [r, deadline] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + deadline);
      v1::DraftInfo info;
      const grpc::Status st =
          v1::Draft::NewStub(r->channel)->GetInfo(&ctx, v1::DraftInfoRequest(), &info);
      const bool healthy = st.ok() && info.pipeline_ready();
      if (st.ok()) r->kv_reserved_fraction = info.kv_reserved_fraction();
      const bool was = r->healthy.exchange(healthy);
      r->series.healthy->Set(healthy ? 1 : 0);
      if (was != healthy) {
        if (healthy) {
          spdlog::info("draft replica {} is serving", r->address);
        } else {
          spdlog::warn("draft replica {} ejected: {}", r->address,
                       st.ok() ? "its pipeline is not connected" : st.error_message());
        }
      }
    }));
  }
  for (auto& c : checks) c.wait();
}

void DraftPool::Start(std::chrono::milliseconds wait) {
  const auto until = std::chrono::steady_clock::now() + wait;
  for (;;) {
    CheckAll(std::chrono::milliseconds(1000));
    if (AnyHealthy() || std::chrono::steady_clock::now() >= until) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  thread_ = std::thread([this] { Loop(); });
}

void DraftPool::Loop() {
  std::unique_lock<std::mutex> l(mu_);
  while (!cv_.wait_for(l, interval_, [this] { return stop_; })) {
    l.unlock();
    CheckAll(std::min(interval_, std::chrono::milliseconds(1000)));
    l.lock();
  }
}

std::unique_ptr<DraftPool::Lease> DraftPool::Pick(const std::vector<const Replica*>& tried) {
  std::lock_guard<std::mutex> l(mu_);  // a consistent choice between concurrent picks
  // The KV fraction is sampled by the health checks, so it may describe a request that ended
  // since; fractions closer than this count as equal (it still steers away from a replica that
  // other routers have filled).
  constexpr float kKvBand = 0.25f;
  Replica* best = nullptr;
  int best_running = 0;
  float best_kv = 0;
  // Starting the scan one replica further each time spreads requests over equally loaded
  // replicas (one client sending requests one after another uses them all).
  const size_t n = replicas_.size(), first = next_++ % n;
  for (size_t k = 0; k < n; ++k) {
    const auto& r = replicas_[(first + k) % n];
    if (!r->healthy) continue;
    if (std::find(tried.begin(), tried.end(), r.get()) != tried.end()) continue;
    // Requests first (this router's exact count); the KV fraction only orders equal counts.
    const int running = r->running.load();
    const float kv = r->kv_reserved_fraction.load();
    if (!best || running < best_running || (running == best_running && kv < best_kv - kKvBand)) {
      best = r.get();
      best_running = running;
      best_kv = kv;
    }
  }
  return best ? std::make_unique<Lease>(best) : nullptr;
}

void DraftPool::Eject(Replica& r) {
  if (r.healthy.exchange(false)) {
    r.series.healthy->Set(0);
    spdlog::warn("draft replica {} ejected: a call found it unavailable", r.address);
  }
}

bool DraftPool::AnyHealthy() const {
  return std::any_of(replicas_.begin(), replicas_.end(),
                     [](const auto& r) { return r->healthy.load(); });
}

}  // namespace pipeinfer::router
