// Engine benchmark: decode (1 token) and speculative-verification-sized runs (2/4/8/16 tokens)
// per weight type on a synthetic model larger than the CPU caches, reported as tokens/s and as
// weight bytes streamed per second, next to the memory bandwidth measured in the same run.
//
//   engine_bench [--threads N] [--types f16,q8_0,q4_0,q4_K,q6_K] [--n-embd 2048] [--n-ff 5632]
//                [--n-layer 4] [--seconds 2] [--dir /tmp]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "absl/strings/str_split.h"
#include "engine/engine.h"
#include "engine/synth.h"
#include "kernels/kernels.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Read bandwidth of a buffer much larger than the caches, using the same thread count.
double MeasureReadBandwidth(pipeinfer::kernels::ThreadPool& pool, size_t bytes, double seconds) {
  const size_t n = bytes / sizeof(uint64_t);
  std::vector<uint64_t> buf(n);
  for (size_t i = 0; i < n; ++i) buf[i] = i * 2654435761u;
  std::vector<uint64_t> sums(pool.size());
  double best = 0;
  const auto start = Clock::now();
  while (Seconds(start, Clock::now()) < seconds) {
    const auto t0 = Clock::now();
    pool.ParallelFor(static_cast<int64_t>(n), 4096, [&](int64_t b, int64_t e, int t) {
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int64_t i = b;
      for (; i + 4 <= e; i += 4) {
        s0 += buf[i];
        s1 += buf[i + 1];
        s2 += buf[i + 2];
        s3 += buf[i + 3];
      }
      for (; i < e; ++i) s0 += buf[i];
      sums[t] += s0 + s1 + s2 + s3;
    });
    const double dt = Seconds(t0, Clock::now());
    best = std::max(best, static_cast<double>(bytes) / dt);
  }
  std::fprintf(stderr, "(checksum %llu)\n",
               static_cast<unsigned long long>(std::accumulate(sums.begin(), sums.end(), 0ull)));
  return best;
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
  app.add_option("--threads", threads);
  app.add_option("--types", types);
  app.add_option("--n-embd", spec.n_embd);
  app.add_option("--n-ff", spec.n_ff);
  app.add_option("--n-layer", spec.n_layer);
  app.add_option("--seconds", seconds, "Time per measurement");
  app.add_option("--dir", dir, "Where the synthetic models are written");
  CLI11_PARSE(app, argc, argv);

  pipeinfer::kernels::ThreadPool pool(threads);
  const double bw = MeasureReadBandwidth(pool, size_t{1} << 30, seconds);
  std::printf("threads %d, SIMD %s, memory read bandwidth %.2f GB/s (1 GiB buffer, best of runs)\n",
              threads, pipeinfer::kernels::UsingSimd() ? "avx2" : "scalar", bw / 1e9);
  std::printf("model: n_embd %u, n_ff %u, n_layer %u, n_vocab %u\n\n", spec.n_embd, spec.n_ff,
              spec.n_layer, spec.n_vocab);
  std::printf(
      "| type | weights MB | run tokens | runs/s | tokens/s | weight GB/s | %% of bandwidth |\n");
  std::printf("|---|---|---|---|---|---|---|\n");

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
    // Layers only (no head): the head would dominate on small models and it is not per-layer
    // work. The benchmark stage is a "middle stage" taking hidden states.
    auto model = pipeinfer::engine::StageModel::Load(path, {0, spec.n_layer, false, false}, true);
    if (!model.ok()) {
      std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
      return 1;
    }
    const double weight_bytes = static_cast<double>((*model)->weight_bytes());
    pipeinfer::engine::EngineOptions opts;
    opts.threads = threads;
    opts.kv_capacity_tokens = 8192;
    opts.max_context = 8192;
    auto engine = pipeinfer::engine::Engine::Create(std::move(*model), opts);
    if (!engine.ok()) return 1;
    auto& e = **engine;
    for (int k : {1, 2, 4, 8, 16}) {
      std::vector<float> hidden(static_cast<size_t>(k) * spec.n_embd, 0.01f);
      uint64_t session = 1;
      (void)e.kv().OpenSession(session);
      int runs = 0;
      // warm-up
      pipeinfer::engine::ForwardInput in;
      in.session = session;
      in.hidden = hidden;
      (void)e.Forward(in);
      const auto t0 = Clock::now();
      while (Seconds(t0, Clock::now()) < seconds) {
        if (e.kv().Find(session, 0)->size() + k > 1024) {  // keep attention cost small and fixed
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
      std::printf("| %s | %.0f | %d | %.1f | %.1f | %.2f | %.0f%% |\n", info->name,
                  weight_bytes / 1e6, k, rps, rps * k, rps * weight_bytes / 1e9,
                  100.0 * rps * weight_bytes / bw);
      std::fflush(stdout);
    }
    std::remove(path.c_str());
  }
  return 0;
}
