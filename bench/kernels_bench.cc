// Micro benchmark of the CPU kernels: MatMul per weight type and batch size (weight GB/s and
// Gflop/s), next to a plain memory-read bandwidth measured in the same run.
//
//   kernels_bench --benchmark_filter='MatMul/q4_0'   (see --help for Google Benchmark's flags)
//
// Weights are random blocks with small finite scales; the matrix (4096 x 4096 by default) is
// larger than the caches, so decode (n_tokens = 1) measures streaming from memory. BM_MatMulL2
// uses a 256 x 1024 matrix that stays in L2 (at most 1 MiB, F32), so that it measures the
// arithmetic of the kernels (FMA chains, decoding, register blocking) rather than memory. Set
// PIPEINFER_QUANT_MATH=exact to time the float path of Q8_0/Q4_0/Q4_K/Q6_K instead of the integer
// one. The `path` argument caps the kernel level (1 avx2, 2 avx512; 0 portable); BM_MatMulPrefill
// times prompt-sized batches (128 and 512 tokens). Weights are laid out as the engine copies them
// for the path (rows interleaved where it wants them, shown in the label);
// PIPEINFER_BENCH_WEIGHTS=file keeps the file layout.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include "gguf/tensor_type.h"
#include "kernels/interleave.h"
#include "kernels/kernels.h"

namespace pipeinfer::kernels {
namespace {

using gguf::TensorType;

constexpr int64_t kRows = 4096, kCols = 4096;
constexpr int64_t kL2Rows = 256, kL2Cols = 1024;

int HardwareThreads() { return std::max(1u, std::thread::hardware_concurrency()); }

std::vector<uint8_t> RandomWeights(TensorType t, int64_t rows, int64_t cols) {
  const auto& info = gguf::TypeInfo(t);
  std::vector<uint8_t> data(rows * (cols / info.block_size) * info.type_size);
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  if (t == TensorType::kF32) {
    for (size_t i = 0; i < data.size(); i += 4) {
      const float f = u(rng);
      std::memcpy(&data[i], &f, 4);
    }
  } else if (t == TensorType::kF16 || t == TensorType::kBF16) {
    for (size_t i = 0; i < data.size(); i += 2) {
      const float f = u(rng);
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      const uint16_t h = t == TensorType::kF16 ? FloatToHalf(f) : static_cast<uint16_t>(bits >> 16);
      std::memcpy(&data[i], &h, 2);
    }
  } else {
    for (auto& b : data) b = static_cast<uint8_t>(rng());
    for (size_t b = 0; b < data.size(); b += info.type_size) {
      for (int off : gguf::HalfFieldOffsets(t)) {
        const uint16_t h = FloatToHalf(0.01f + 0.01f * u(rng));
        std::memcpy(&data[b + off], &h, 2);
      }
    }
  }
  return data;
}

// Args: type id, n_tokens, threads, path (0 portable, 1 avx2, 2 avx512: the cap of
// SetMaxSimdLevel).
void RunMatMul(benchmark::State& state, int64_t rows, int64_t cols) {
  const auto type = static_cast<TensorType>(state.range(0));
  const int64_t n_tokens = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  const auto level = static_cast<SimdLevel>(state.range(3));
  if (level > BestSimdLevel()) {
    state.SkipWithError((std::string("no ") + SimdLevelName(level) + " on this CPU").c_str());
    return;
  }
  SetMaxSimdLevel(level);
  const auto& info = gguf::TypeInfo(type);
  const auto data = RandomWeights(type, rows, cols);
  // The weights in the layout the engine copies them into for this path (kernels/interleave.h),
  // or in the file layout when PIPEINFER_BENCH_WEIGHTS=file (what a stage computing on its
  // mapped file, --weight-memory mmap, reads).
  const char* layout = std::getenv("PIPEINFER_BENCH_WEIGHTS");
  const bool file_layout = layout != nullptr && std::string(layout) == "file";
  const int interleave = file_layout ? 1 : PreferredRowInterleave(type, rows, cols);
  std::vector<uint8_t> grouped(interleave > 1 ? data.size() : 0);
  Matrix w{type, data.data(), rows, cols, data.size() / rows};
  if (interleave > 1) {
    InterleaveRows(w, interleave, grouped.data());
    w.data = grouped.data();
    w.interleave = interleave;
  }
  std::vector<float> x(n_tokens * cols), y(n_tokens * rows);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& v : x) v = u(rng);
  ThreadPool pool(threads);
  for (auto _ : state) {
    MatMul(w, x.data(), cols, n_tokens, y.data(), rows, pool);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  SetMaxSimdLevel(SimdLevel::kAvx512);
  const double iters = static_cast<double>(state.iterations());
  state.counters["weight_GBps"] =
      benchmark::Counter(iters * data.size() / 1e9, benchmark::Counter::kIsRate);
  state.counters["Gflops"] =
      benchmark::Counter(iters * 2.0 * rows * cols * n_tokens / 1e9, benchmark::Counter::kIsRate);
  SetMaxSimdLevel(level);
  state.SetLabel(std::string(info.name) + " " + ActivePath() +
                 (interleave > 1 ? " rows x" + std::to_string(interleave) : ""));
  SetMaxSimdLevel(SimdLevel::kAvx512);
}

void BM_MatMul(benchmark::State& state) { RunMatMul(state, kRows, kCols); }
void BM_MatMulL2(benchmark::State& state) { RunMatMul(state, kL2Rows, kL2Cols); }

// Plain streaming read of 512 MiB split over `threads` threads: the bandwidth the decode rows
// above should be compared with.
void BM_MemoryRead(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const size_t n = size_t{512} << 20 >> 3;
  static std::vector<uint64_t> buf(n, 1);
  ThreadPool pool(threads);
  std::vector<uint64_t> sums(threads);
  for (auto _ : state) {
    pool.ParallelFor(static_cast<int64_t>(n), 4096, [&](int64_t b, int64_t e, int t) {
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int64_t i = b; i + 4 <= e; i += 4) {
        s0 += buf[i];
        s1 += buf[i + 1];
        s2 += buf[i + 2];
        s3 += buf[i + 3];
      }
      sums[t] = s0 + s1 + s2 + s3;
    });
    benchmark::DoNotOptimize(sums.data());
  }
  state.counters["GBps"] = benchmark::Counter(static_cast<double>(state.iterations()) * n * 8 / 1e9,
                                              benchmark::Counter::kIsRate);
}

constexpr TensorType kTypes[] = {
    TensorType::kF32,  TensorType::kF16,  TensorType::kBF16, TensorType::kQ8_0, TensorType::kQ4_0,
    TensorType::kQ4_1, TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kQ2_K, TensorType::kQ3_K,
    TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K};

void MatMulArgs(benchmark::internal::Benchmark* b) {
  for (TensorType t : kTypes) {
    for (int64_t n : {1, 2, 4, 8, 16}) {
      for (int threads : {1, HardwareThreads()}) {
        for (int path : {1, 2}) b->Args({static_cast<int64_t>(t), n, threads, path});
        if (threads == HardwareThreads() && HardwareThreads() == 1) break;
      }
    }
    b->Args({static_cast<int64_t>(t), 1, 1, 0});  // portable path, decode, one thread
  }
  b->ArgNames({"type", "tokens", "threads", "path"});
}

// In-cache shapes, one thread: every batch size around the kernels' token groups.
void MatMulL2Args(benchmark::internal::Benchmark* b) {
  for (TensorType t : kTypes) {
    for (int64_t n : {1, 2, 3, 4, 5, 8, 9, 16, 64}) {
      for (int path : {1, 2}) b->Args({static_cast<int64_t>(t), n, 1, path});
    }
  }
  b->ArgNames({"type", "tokens", "threads", "path"});
}

// Prefill-sized products (n_tokens 128 and 512) of a 2048 x 2048 matrix, per path and thread
// count: the blocked GEMM.
void BM_MatMulPrefill(benchmark::State& state) { RunMatMul(state, 2048, 2048); }
void MatMulPrefillArgs(benchmark::internal::Benchmark* b) {
  for (TensorType t : {TensorType::kF16, TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ4_K,
                       TensorType::kQ6_K}) {
    for (int64_t n : {128, 512}) {
      for (int threads : {1, HardwareThreads()}) {
        for (int path : {1, 2}) b->Args({static_cast<int64_t>(t), n, threads, path});
        if (HardwareThreads() == 1) break;
      }
    }
  }
  b->ArgNames({"type", "tokens", "threads", "path"});
}

// Decode over long rows: a 2048 x 11008 matrix (a 7B model's FFN down projection; 45 MB in F16),
// whose activations (43 KiB in F32) do not stay in L1 next to the streaming weights. Compare
// PIPEINFER_BENCH_WEIGHTS=file (rows one at a time) with the default grouped copy.
void BM_MatMulLongRows(benchmark::State& state) { RunMatMul(state, 2048, 11008); }
void MatMulLongRowsArgs(benchmark::internal::Benchmark* b) {
  for (TensorType t : {TensorType::kF32, TensorType::kF16, TensorType::kBF16}) {
    for (int threads : {1, HardwareThreads()}) {
      b->Args({static_cast<int64_t>(t), 1, threads, 2});
      if (HardwareThreads() == 1) break;
    }
  }
  b->ArgNames({"type", "tokens", "threads", "path"});
}

BENCHMARK(BM_MemoryRead)
    ->Arg(1)
    ->Arg(HardwareThreads())
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MatMul)->Apply(MatMulArgs)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MatMulL2)->Apply(MatMulL2Args)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_MatMulPrefill)->Apply(MatMulPrefillArgs)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MatMulLongRows)
    ->Apply(MatMulLongRowsArgs)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace pipeinfer::kernels

BENCHMARK_MAIN();
