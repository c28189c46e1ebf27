// Helpers shared by the spec tests that drive a controller without a pipeline: a stage cost fit
// of exactly a + b * tokens per pass, and a sink that records what the controller sends.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "spec/pipeline_types.h"
#include "spec/spec_budget.h"

namespace pipeinfer::spec::testing {

// A budget that has measured passes of a + b * tokens microseconds (1..40 tokens).
inline std::unique_ptr<SpecBudget> FittedBudget(double a, double b, uint32_t stages) {
  SpecBudgetOptions o;
  o.n_stages = stages;
  auto budget = std::make_unique<SpecBudget>(o);
  for (uint32_t t = 1; t <= 40; ++t) budget->ObservePass(t, static_cast<uint64_t>(a + b * t));
  return budget;
}

// Records runs (with when they were sent) and cancels; nothing comes back. Run ids are 1, 2, ...
class RecordingSink : public PipelineSink {
 public:
  absl::StatusOr<uint64_t> SendRun(const RunSpec& run) override {
    runs.push_back(run);
    sent_at.push_back(std::chrono::steady_clock::now());
    return runs.size();
  }
  absl::Status SendKvOp(const KvOpSpec&) override { return absl::OkStatus(); }
  void Cancel(std::span<const uint64_t> ids) override {
    cancelled.insert(cancelled.end(), ids.begin(), ids.end());
  }
  std::vector<RunSpec> runs;
  std::vector<std::chrono::steady_clock::time_point> sent_at;
  std::vector<uint64_t> cancelled;
};

}  // namespace pipeinfer::spec::testing
