// A fixed pool of worker threads shared by every kernel. Threads are created once; ParallelFor
// splits [0, n) into contiguous chunks, runs them on the workers and the calling thread, and
// returns when all are done. Calls from several threads are serialized.
//
// Between calls the workers (and a caller waiting for them) spin for a short while
// (kSpinMicros) before they sleep: a forward pass makes dozens of calls a few microseconds
// apart, and waking a sleeping thread costs more than many of those chunks take.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace pipeinfer::kernels {

class ThreadPool {
 public:
  // n_threads >= 1 counts the calling thread (n_threads - 1 workers are started).
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // How long an idle worker, or a caller waiting for the workers, polls before sleeping.
  static constexpr int kSpinMicros = 100;

  // Runs fn(begin, end, thread_index) over a partition of [0, n) into at most size() chunks
  // (chunk boundaries are multiples of `grain`, except the last). Deterministic: the same n,
  // grain and size() always give the same chunks.
  void ParallelFor(int64_t n, int64_t grain,
                   const std::function<void(int64_t begin, int64_t end, int thread)>& fn);

 private:
  void WorkerLoop(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // one ParallelFor at a time
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  const std::function<void(int64_t, int64_t, int)>* fn_ = nullptr;
  std::vector<std::pair<int64_t, int64_t>> chunks_;
  // Written under mu_; atomic so that spinning threads can poll them without it.
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace pipeinfer::kernels
