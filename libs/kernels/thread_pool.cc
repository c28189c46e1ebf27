#include "kernels/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace pipeinfer::kernels {
namespace {

// The pool whose ParallelFor body the current thread is running (workers: their own pool while
// running a chunk; callers: the pool they called). Used to reject re-entrant calls, which would
// deadlock on call_mu_ (and would hand out thread indexes already in use).
thread_local const ThreadPool* tls_active_pool = nullptr;

class ActiveScope {
 public:
  explicit ActiveScope(const ThreadPool* pool) : saved_(tls_active_pool) { tls_active_pool = pool; }
  ~ActiveScope() { tls_active_pool = saved_; }

 private:
  const ThreadPool* saved_;
};

// Polls `ready` for up to ThreadPool::kSpinMicros; true as soon as it holds.
template <class F>
bool SpinUntil(const F& ready) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::microseconds(ThreadPool::kSpinMicros);
  for (int i = 0;; ++i) {
    if (ready()) return true;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if ((i & 63) == 63 && std::chrono::steady_clock::now() >= deadline) return false;
  }
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  workers_.reserve(n_threads_ - 1);
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    std::pair<int64_t, int64_t> chunk{0, 0};
    const std::function<void(int64_t, int64_t, int)>* fn = nullptr;
    SpinUntil([&] {
      return stop_.load(std::memory_order_acquire) ||
             generation_.load(std::memory_order_acquire) != seen;
    });
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      // Chunk i belongs to thread i; a worker without a chunk in this generation goes back to
      // sleep (it is not counted in pending_).
      if (static_cast<size_t>(index) >= chunks_.size()) continue;
      chunk = chunks_[index];
      fn = fn_;
    }
    {
      ActiveScope scope(this);
      (*fn)(chunk.first, chunk.second, index);
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

void ThreadPool::ParallelFor(
    int64_t n, int64_t grain,
    const std::function<void(int64_t begin, int64_t end, int thread)>& fn) {
  if (n <= 0) return;
  if (tls_active_pool == this) {
    std::fprintf(stderr,
                 "ThreadPool::ParallelFor called from inside a ParallelFor of the same pool\n");
    std::abort();
  }
  grain = std::max<int64_t>(1, grain);
  // Split [0, n) into units of `grain` elements and give each of `n_chunks` threads a contiguous,
  // nearly equal run of units (chunk i: units [i*units/n_chunks, (i+1)*units/n_chunks)). Only n,
  // grain and size() enter, so the partition is deterministic.
  const int64_t units = (n + grain - 1) / grain;
  const int n_chunks = static_cast<int>(std::min<int64_t>(n_threads_, units));
  if (n_chunks == 1) {
    std::lock_guard<std::mutex> call_lock(call_mu_);
    ActiveScope scope(this);
    fn(0, n, 0);
    return;
  }

  std::lock_guard<std::mutex> call_lock(call_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    chunks_.clear();
    for (int i = 0; i < n_chunks; ++i) {
      const int64_t u0 = units * i / n_chunks, u1 = units * (i + 1) / n_chunks;
      chunks_.emplace_back(u0 * grain, std::min(n, u1 * grain));
    }
    fn_ = &fn;
    pending_ = n_chunks - 1;
    ++generation_;
  }
  work_cv_.notify_all();
  // Wait for the workers even if the caller's chunk throws: they still use fn and chunks_.
  // (An exception thrown on a worker terminates the process; the kernels never throw.)
  struct WaitForWorkers {
    ThreadPool* pool;
    ~WaitForWorkers() {
      SpinUntil([&] { return pool->pending_.load(std::memory_order_acquire) == 0; });
      std::unique_lock<std::mutex> lock(pool->mu_);
      pool->done_cv_.wait(lock, [&] { return pool->pending_ == 0; });
      pool->fn_ = nullptr;
    }
  } wait{this};
  ActiveScope scope(this);
  fn(chunks_[0].first, chunks_[0].second, 0);  // chunks_ is stable until pending_ reaches 0
}

}  // namespace pipeinfer::kernels
