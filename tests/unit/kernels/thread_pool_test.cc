// ThreadPool: exact coverage, the documented chunking, determinism, thread reuse, the calling
// thread's participation, concurrent callers, and clean shutdown.
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/thread_pool.h"

namespace pipeinfer::kernels {
namespace {

struct Chunk {
  int64_t begin, end;
  int thread;
  bool operator<(const Chunk& o) const {
    return std::tie(begin, end, thread) < std::tie(o.begin, o.end, o.thread);
  }
  bool operator==(const Chunk& o) const {
    return begin == o.begin && end == o.end && thread == o.thread;
  }
};

std::vector<Chunk> Record(ThreadPool& pool, int64_t n, int64_t grain) {
  std::mutex mu;
  std::vector<Chunk> chunks;
  pool.ParallelFor(n, grain, [&](int64_t b, int64_t e, int t) {
    std::lock_guard<std::mutex> lock(mu);
    chunks.push_back({b, e, t});
  });
  std::sort(chunks.begin(), chunks.end());
  return chunks;
}

TEST(KernelsThreadPool, CoversEveryIndexExactlyOnceWithValidChunks) {
  for (int threads : {1, 2, 3, 4, 7}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 2, 3, 5, 7, 8, 63, 100, 1001}) {
      for (int64_t grain : {1, 2, 3, 8, 64, 1000}) {
        std::vector<std::atomic<int>> hits(n);
        for (auto& h : hits) h = 0;
        pool.ParallelFor(n, grain, [&](int64_t b, int64_t e, int) {
          for (int64_t i = b; i < e; ++i) hits[i]++;
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i], 1) << n << " " << grain << " " << i;

        const auto chunks = Record(pool, n, grain);
        SCOPED_TRACE(testing::Message()
                     << "threads " << threads << " n " << n << " grain " << grain);
        if (n == 0) {
          EXPECT_TRUE(chunks.empty());
          continue;
        }
        const int64_t units = (n + grain - 1) / grain;
        EXPECT_EQ(static_cast<int64_t>(chunks.size()), std::min<int64_t>(threads, units));
        std::set<int> thread_ids;
        int64_t expect_begin = 0;
        for (const Chunk& c : chunks) {
          EXPECT_EQ(c.begin, expect_begin);  // contiguous, in order, no gaps or overlaps
          EXPECT_LT(c.begin, c.end);         // no empty chunks
          EXPECT_EQ(c.begin % grain, 0);
          if (c.end != n) {
            EXPECT_EQ(c.end % grain, 0);
          }
          EXPECT_GE(c.thread, 0);
          EXPECT_LT(c.thread, threads);
          thread_ids.insert(c.thread);
          expect_begin = c.end;
        }
        EXPECT_EQ(expect_begin, n);
        EXPECT_EQ(thread_ids.size(), chunks.size());  // one chunk per thread index
        // Balanced: chunk sizes (in units of grain) differ by at most one.
        int64_t min_u = units, max_u = 0;
        for (const Chunk& c : chunks) {
          const int64_t u = (c.end - c.begin + grain - 1) / grain;
          min_u = std::min(min_u, u);
          max_u = std::max(max_u, u);
        }
        EXPECT_LE(max_u - min_u, 1);
        // Deterministic.
        for (int rep = 0; rep < 3; ++rep) EXPECT_EQ(Record(pool, n, grain), chunks);
      }
    }
  }
}

TEST(KernelsThreadPool, ReusesAFixedSetOfThreadsIncludingTheCaller) {
  const int kThreads = 4;
  ThreadPool pool(kThreads);
  std::mutex mu;
  std::map<int, std::set<std::thread::id>> ids_by_index;
  for (int call = 0; call < 200; ++call) {
    pool.ParallelFor(kThreads * 16, 16, [&](int64_t, int64_t, int t) {
      std::lock_guard<std::mutex> lock(mu);
      ids_by_index[t].insert(std::this_thread::get_id());
    });
  }
  ASSERT_EQ(ids_by_index.size(), static_cast<size_t>(kThreads));
  std::set<std::thread::id> all;
  for (const auto& [index, ids] : ids_by_index) {
    EXPECT_EQ(ids.size(), 1u) << "thread index " << index << " ran on several threads";
    all.insert(ids.begin(), ids.end());
  }
  EXPECT_EQ(all.size(), static_cast<size_t>(kThreads));             // no new threads per call
  EXPECT_EQ(*ids_by_index[0].begin(), std::this_thread::get_id());  // the caller is thread 0
}

TEST(KernelsThreadPool, SmallRangesRunOnTheCaller) {
  ThreadPool pool(4);
  std::thread::id ran_on;
  int calls = 0;
  pool.ParallelFor(5, 8, [&](int64_t b, int64_t e, int t) {
    ran_on = std::this_thread::get_id();
    EXPECT_EQ(b, 0);
    EXPECT_EQ(e, 5);
    EXPECT_EQ(t, 0);
    ++calls;
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(ran_on, std::this_thread::get_id());
}

TEST(KernelsThreadPool, ConcurrentCallersAreSerializedAndCorrect) {
  ThreadPool pool(3);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        pool.ParallelFor(1000, 7, [&](int64_t b, int64_t e, int) { total += e - b; });
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), 4 * 50 * 1000);
}

TEST(KernelsThreadPool, ExceptionOnTheCallerWaitsForTheWorkers) {
  ThreadPool pool(2);
  std::atomic<int> worker_done{0};
  EXPECT_THROW(pool.ParallelFor(2, 1,
                                [&](int64_t, int64_t, int t) {
                                  if (t == 0) throw std::runtime_error("caller chunk");
                                  std::this_thread::sleep_for(std::chrono::milliseconds(20));
                                  worker_done = 1;
                                }),
               std::runtime_error);
  EXPECT_EQ(worker_done.load(), 1);  // ParallelFor did not return before the worker finished
  std::atomic<int> n{0};
  pool.ParallelFor(10, 1, [&](int64_t b, int64_t e, int) { n += static_cast<int>(e - b); });
  EXPECT_EQ(n.load(), 10);  // still usable
}

TEST(KernelsThreadPool, ConstructAndDestroyRepeatedly) {
  for (int i = 0; i < 50; ++i) {
    ThreadPool pool(1 + i % 5);
    if (i % 2) {
      std::atomic<int> n{0};
      pool.ParallelFor(10, 1, [&](int64_t b, int64_t e, int) { n += static_cast<int>(e - b); });
      EXPECT_EQ(n.load(), 10);
    }
  }
  ThreadPool clamped(0);  // treated as 1 thread
  EXPECT_EQ(clamped.size(), 1);
}

}  // namespace
}  // namespace pipeinfer::kernels
