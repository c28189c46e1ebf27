// engine_bench --model FILE: decode and prefill of a whole GGUF model (embedding, every layer,
// output norm and head), timed the way llama-bench times its tg and pp tests, so that both engines
// can be measured on the same file (bench/llamacpp_compare.sh).
#pragma once

#include <string>
#include <vector>

#include "engine/engine.h"

namespace pipeinfer::bench {

struct ModelFileBenchOptions {
  std::string model;
  int threads = 1;
  std::vector<int> prompt_lengths;  // pp tests: one run of n tokens from an empty cache
  int gen = 64;                     // tg test: gen one-token runs from an empty cache
  int reps = 3;                     // timed repetitions per test (after one warm-up)
  std::string json_path;            // if set, one JSON object per test is written here (JSONL)
  std::string kernels;              // name of the kernel path in use, for the report
  engine::WeightMemory weight_memory = engine::WeightMemory::kHugePages;
};

// Runs the tests and prints a markdown table; `bandwidth` is the read bandwidth (bytes/s) measured
// with the same thread count, used for the share of bandwidth of decode. Returns a process exit
// code.
int RunModelFileBench(const ModelFileBenchOptions& options, double bandwidth);

}  // namespace pipeinfer::bench
