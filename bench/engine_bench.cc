// Engine benchmark: decode (1 token) and speculative-verification-sized runs (2/4/8/16 tokens)
// per weight type on a synthetic model larger than the CPU caches, reported as tokens/s and as
// weight bytes streamed per second, next to the memory bandwidth measured in the same run.
//
//   engine_bench [--threads N] [--types f16,q8_0,q4_0,q4_K,q6_K] [--n-embd 2048] [--n-ff 5632]
//                [--n-layer 4] [--n-vocab 4096] [--head] [--runs 1,2,4,8,16] [--prefill 128,512]
//                [--path scalar|avx2|avx512] [--seconds 2] [--dir /tmp]
//   engine_bench --model FILE [--threads N] [--prefill 128,512] [--gen 64] [--reps 3] [--json F]
//   engine_bench --device cuda:0 [...]   the same on a GPU stage (CUDA builds): the bandwidth
//                column is then the device's HBM, measured by a device-to-device copy in the same
//                run (bytes read + written per second), and prefill rows add TFLOP/s
//
// --head adds the output norm and projection (n_vocab rows) to the stage: every run then returns
// the logits of its last token, as a decode step does. --prefill N times one run of N tokens in a
// fresh sequence (prompt processing). --path caps the kernels' instruction set (the default is the
// best the CPU has; see kernels::ActivePath).
//
// --model times a whole model file instead (embedding, layers, head) the way llama-bench does: pp
// = one run of N tokens from an empty cache, tg = --gen one-token runs from an empty cache
// (model_file_bench.h; bench/llamacpp_compare.sh compares with llama.cpp on the same files).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include <immintrin.h>

#include <CLI/CLI.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/huge_pages.h"
#include "engine/devices.h"
#include "engine/engine.h"
#include "engine/synth.h"
#include "kernels/kernels.h"
#include "model_file_bench.h"
#ifdef PIPEINFER_HAVE_CUDA
#include "cuda/cuda_ops.h"
#endif

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Sums [b, e) of the buffer with 256-bit loads (four independent chains), the way the decode
// kernels read weights; the portable loop is for CPUs without AVX2.
__attribute__((target("avx2"))) uint64_t SumWordsAvx2(const uint64_t* p, int64_t b, int64_t e) {
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = b;
  for (; i + 16 <= e; i += 16) {
    s0 = _mm256_add_epi64(s0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    s1 = _mm256_add_epi64(s1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
    s2 = _mm256_add_epi64(s2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
    s3 = _mm256_add_epi64(s3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)));
  uint64_t sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; i < e; ++i) sum += p[i];
  return sum;
}

uint64_t SumWords(const uint64_t* p, int64_t b, int64_t e) {
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = b;
  for (; i + 4 <= e; i += 4) {
    s0 += p[i];
    s1 += p[i + 1];
    s2 += p[i + 2];
    s3 += p[i + 3];
  }
  for (; i < e; ++i) s0 += p[i];
  return s0 + s1 + s2 + s3;
}

struct Bandwidth {
  double median = 0;  // bytes/s: what the "% of bandwidth" columns divide by
  double best = 0;
  int runs = 0;
};

// Read bandwidth of a buffer much larger than the caches, using the same thread count. The buffer
// is in transparent huge pages where the kernel allows, like the weights of a CPU stage (the
// best-case read rate; 4 KiB pages read slower: common/huge_pages.h). The median of the runs is
// the reference: on a shared VM the best run can be twice the typical one (the two vCPUs
// briefly on separate physical cores), which no decode measurement sees for its whole duration.
Bandwidth MeasureReadBandwidth(pipeinfer::kernels::ThreadPool& pool, size_t bytes, double seconds) {
  const size_t n = bytes / sizeof(uint64_t);
  auto mem = pipeinfer::HugePageBuffer::Allocate(n * sizeof(uint64_t));
  if (!mem.ok()) {
    std::fprintf(stderr, "%s\n", std::string(mem.status().message()).c_str());
    return {};
  }
  uint64_t* const buf = reinterpret_cast<uint64_t*>(mem->data());
  for (size_t i = 0; i < n; ++i) buf[i] = i * 2654435761u;
  const bool avx2 = __builtin_cpu_supports("avx2");
  std::vector<uint64_t> sums(pool.size());
  std::vector<double> rates;
  const auto start = Clock::now();
  while (rates.size() < 5 || Seconds(start, Clock::now()) < seconds) {
    const auto t0 = Clock::now();
    pool.ParallelFor(static_cast<int64_t>(n), 4096, [&](int64_t b, int64_t e, int t) {
      sums[t] += avx2 ? SumWordsAvx2(buf, b, e) : SumWords(buf, b, e);
    });
    rates.push_back(static_cast<double>(bytes) / Seconds(t0, Clock::now()));
  }
  std::fprintf(stderr, "(checksum %llu)\n",
               static_cast<unsigned long long>(std::accumulate(sums.begin(), sums.end(), 0ull)));
  std::sort(rates.begin(), rates.end());
  return {rates[rates.size() / 2], rates.back(), static_cast<int>(rates.size())};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"PipeInfer engine benchmark"};
  int threads = 1;
  std::string types = "f16,q8_0,q4_0,q4_K,q6_K";
  pipeinfer::engine::SynthSpec spec;
  spec.n_embd = 2048;
  spec.n_ff = 5632;
  spec.n_layer = 4;
  spec.n_head = 16;
  spec.n_head_kv = 16;
  spec.n_vocab = 4096;
  double seconds = 2.0;
  std::string dir = "/tmp";
  bool head = false;
  std::string runs_list = "1,2,4,8,16";
  std::string prefill_list;
  std::string path_name;
  pipeinfer::bench::ModelFileBenchOptions file_opts;
  app.add_option("--model", file_opts.model, "Time this GGUF model file (whole model)");
  app.add_option("--gen", file_opts.gen, "--model: one-token runs per decode test");
  app.add_option("--reps", file_opts.reps, "--model: timed repetitions per test");
  app.add_option("--json", file_opts.json_path, "--model: append one JSON line per test here");
  app.add_option("--threads", threads);
  app.add_option("--types", types);
  app.add_option("--n-embd", spec.n_embd);
  app.add_option("--n-ff", spec.n_ff);
  app.add_option("--n-layer", spec.n_layer);
  app.add_option("--n-vocab", spec.n_vocab);
  uint32_t n_head = 0;
  app.add_option("--n-head", n_head, "Attention heads (query and KV; default 16)");
  app.add_flag("--head", head, "Include the output norm and projection (logits of the last token)");
  app.add_option("--runs", runs_list, "Run sizes (tokens per forward pass) to time");
  app.add_option("--prefill", prefill_list, "Prompt lengths to time as one forward pass each");
  app.add_option("--path", path_name, "Kernel path cap: scalar, avx2 or avx512");
  app.add_option("--seconds", seconds, "Time per measurement");
  app.add_option("--dir", dir, "Where the synthetic models are written");
  std::string device = "cpu";
  app.add_option("--device", device, "Where the stage runs: cpu or cuda:N (CUDA builds)");
  std::string weight_memory = "hugepages";
  app.add_option("--weight-memory", weight_memory,
                 "CPU stages: hugepages (a copy in transparent huge pages) or mmap (the file's "
                 "mapping)")
      ->check(CLI::IsMember(pipeinfer::engine::WeightMemoryNames()));
  int context = 1024;
  app.add_option("--context", context,
                 "Run-size rows: a session is restarted before it passes this many tokens, so "
                 "attention reads between 0 and this many keys (default 1024)")
      ->check(CLI::Range(16, 8192));
  CLI11_PARSE(app, argc, argv);
  const bool gpu = device != "cpu";
  if (n_head > 0) spec.n_head = spec.n_head_kv = n_head;

  if (!path_name.empty()) {
    const auto level = pipeinfer::kernels::ParseSimdLevel(path_name);
    if (!level) {
      std::fprintf(stderr, "unknown --path %s (scalar, avx2, avx512)\n", path_name.c_str());
      return 1;
    }
    pipeinfer::kernels::SetMaxSimdLevel(*level);
  }
  std::vector<int> run_sizes, prefill_sizes;
  for (const auto* list : {&runs_list, &prefill_list}) {
    for (const auto& part : absl::StrSplit(*list, ',', absl::SkipEmpty())) {
      int v = 0;
      if (!absl::SimpleAtoi(part, &v) || v <= 0) {
        std::fprintf(stderr, "bad run size '%s'\n", std::string(part).c_str());
        return 1;
      }
      (list == &runs_list ? run_sizes : prefill_sizes).push_back(v);
    }
  }
  const auto memory = pipeinfer::engine::WeightMemoryNamed(weight_memory);
  pipeinfer::kernels::ThreadPool pool(threads);
  double bw = 0;
  if (gpu) {
#ifdef PIPEINFER_HAVE_CUDA
    const auto parsed = pipeinfer::engine::ParseDevices(device);
    if (!parsed.ok() || !parsed->cuda || parsed->count() != 1) {
      std::fprintf(stderr, "--device takes cpu or one cuda:N\n");
      return 1;
    }
    const auto dev = pipeinfer::cuda::UseDevice(parsed->ordinals[0]);
    auto copy_bw =
        dev.ok() ? pipeinfer::cuda::MeasureCopyBandwidth(parsed->ordinals[0], size_t{1} << 30, 20)
                 : absl::StatusOr<double>(dev.status());
    if (!copy_bw.ok()) {
      std::fprintf(stderr, "%s\n", std::string(copy_bw.status().message()).c_str());
      return 1;
    }
    bw = *copy_bw;
    std::printf(
        "device %s (%s, %d SMs), HBM bandwidth %.1f GB/s (device-to-device copy of 1 GiB, "
        "bytes read + written, best of 20)\n",
        device.c_str(), dev->name.c_str(), dev->sm_count, bw / 1e9);
#else
    std::fprintf(stderr, "no CUDA device: this build has no CUDA backend\n");
    return 1;
#endif
  } else {
    const Bandwidth m = MeasureReadBandwidth(pool, size_t{1} << 30, seconds);
    bw = m.median;
    std::printf(
        "threads %d, kernels %s (cpu: %s), memory read bandwidth %.2f GB/s (1 GiB buffer, "
        "transparent huge pages %s, median of %d runs; best %.2f GB/s)\n",
        threads, pipeinfer::kernels::ActivePath(), pipeinfer::kernels::CpuFeatureString().c_str(),
        bw / 1e9, pipeinfer::TransparentHugePageMode().c_str(), m.runs, m.best / 1e9);
  }
  if (!file_opts.model.empty()) {
    file_opts.threads = threads;
    file_opts.weight_memory = memory;
    file_opts.prompt_lengths = prefill_sizes;
    file_opts.kernels = pipeinfer::kernels::ActivePath();
    return pipeinfer::bench::RunModelFileBench(file_opts, bw);
  }
  std::printf(
      "model: n_embd %u, n_ff %u, n_layer %u, n_head %u, n_vocab %u, head %s; run-size rows at "
      "contexts below %d tokens\n\n",
      spec.n_embd, spec.n_ff, spec.n_layer, spec.n_head, spec.n_vocab, head ? "yes" : "no",
      context);
  std::printf(
      "| type | weights MB | run tokens | runs/s | tokens/s | weight GB/s | %% of bandwidth | "
      "matrix TFLOP/s |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");

  for (const auto& type_name : absl::StrSplit(types, ',')) {
    std::optional<pipeinfer::gguf::TensorTypeInfo> info;
    for (uint32_t id = 0; id < 64; ++id) {
      auto i = pipeinfer::gguf::LookupTensorType(id);
      if (i && type_name == i->name) info = i;
    }
    if (!info) {
      std::fprintf(stderr, "unknown type %s\n", std::string(type_name).c_str());
      return 1;
    }
    spec.type = info->type;
    spec.name = std::string("bench-") + info->name;
    const std::string path = dir + "/pipeinfer-bench-" + info->name + ".gguf";
    if (auto st = pipeinfer::engine::WriteSyntheticModel(spec, path); !st.ok()) {
      std::fprintf(stderr, "synth failed: %s\n", std::string(st.message()).c_str());
      return 1;
    }
    // By default layers only (no head): the head would dominate on small models and it is not
    // per-layer work. The benchmark stage takes hidden states (no token embeddings); with --head
    // it is the last stage.
    auto model = pipeinfer::engine::StageModel::Load(path, {0, spec.n_layer, false, head}, true);
    if (!model.ok()) {
      std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
      return 1;
    }
    const double weight_bytes = static_cast<double>((*model)->weight_bytes());
    pipeinfer::engine::EngineOptions opts;
    opts.threads = threads;
    opts.kv_capacity_tokens = 8192;
    opts.max_context = 8192;
    opts.devices = device;
    opts.weight_memory = memory;
    // Multiply-adds of one token through the stage's matrices (for prefill TFLOP/s).
    const auto& hp = (*model)->hparams();
    const double flops_per_token =
        2.0 * spec.n_layer *
            (static_cast<double>(hp.n_embd) * (2.0 * hp.n_embd_q() + 2.0 * hp.n_embd_kv()) +
             3.0 * hp.n_embd * hp.n_ff) +
        (head ? 2.0 * hp.n_embd * hp.n_vocab : 0.0);
    auto engine = pipeinfer::engine::Engine::Create(std::move(*model), opts);
    if (!engine.ok()) {
      std::fprintf(stderr, "%s\n", std::string(engine.status().message()).c_str());
      return 1;
    }
    auto& e = **engine;
    uint64_t session = 1;
    for (int k : run_sizes) {
      std::vector<float> hidden(static_cast<size_t>(k) * spec.n_embd, 0.01f);
      const int32_t last_row = k - 1;
      (void)e.kv().OpenSession(++session);
      int runs = 0;
      // warm-up
      pipeinfer::engine::ForwardInput in;
      in.session = session;
      in.hidden = hidden;
      if (head) in.output_rows = std::span<const int32_t>(&last_row, 1);
      (void)e.Forward(in);
      const auto t0 = Clock::now();
      while (Seconds(t0, Clock::now()) < seconds) {
        if (e.kv().Find(session, 0)->size() + k > context) {  // keep attention cost bounded
          (void)e.kv().CloseSession(session);
          (void)e.kv().OpenSession(++session);
        }
        in.session = session;
        auto o = e.Forward(in);
        if (!o.ok()) {
          std::fprintf(stderr, "%s\n", std::string(o.status().message()).c_str());
          return 1;
        }
        ++runs;
      }
      const double dt = Seconds(t0, Clock::now());
      (void)e.kv().CloseSession(session);
      const double rps = runs / dt;
      std::printf("| %s | %.0f | %d | %.1f | %.1f | %.2f | %.0f%% | %.3f |\n", info->name,
                  weight_bytes / 1e6, k, rps, rps * k, rps * weight_bytes / 1e9,
                  100.0 * rps * weight_bytes / bw, rps * k * flops_per_token / 1e12);
      std::fflush(stdout);
    }
    // Prefill: one run of n tokens in a fresh sequence, repeated; tokens/s = n / run time.
    for (int n : prefill_sizes) {
      std::vector<float> hidden(static_cast<size_t>(n) * spec.n_embd);
      for (size_t i = 0; i < hidden.size(); ++i) hidden[i] = 0.01f * static_cast<float>(i % 97);
      const int32_t last_row = n - 1;
      pipeinfer::engine::ForwardInput in;
      in.hidden = hidden;
      if (head) in.output_rows = std::span<const int32_t>(&last_row, 1);
      int runs = 0;
      double busy = 0;
      const auto t0 = Clock::now();
      for (int i = 0; i < 2 || Seconds(t0, Clock::now()) < seconds; ++i) {
        (void)e.kv().OpenSession(++session);
        in.session = session;
        const auto r0 = Clock::now();
        auto o = e.Forward(in);
        const auto r1 = Clock::now();
        (void)e.kv().CloseSession(session);
        if (!o.ok()) {
          std::fprintf(stderr, "%s\n", std::string(o.status().message()).c_str());
          return 1;
        }
        if (i > 0) {  // the first run is a warm-up
          busy += Seconds(r0, r1);
          ++runs;
        }
      }
      std::printf("| %s | %.0f | prefill %d | %.2f | %.1f | %.2f | %.0f%% | %.3f |\n", info->name,
                  weight_bytes / 1e6, n, runs / busy, runs * n / busy,
                  runs * weight_bytes / busy / 1e9, 100.0 * runs * weight_bytes / busy / bw,
                  runs * n * flops_per_token / busy / 1e12);
      std::fflush(stdout);
    }
    std::remove(path.c_str());
  }
  return 0;
}
