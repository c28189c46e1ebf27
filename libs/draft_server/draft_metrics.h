// The draft service's metrics: every counter lives in one registry, so that GetStats and /metrics
// read the same values. Private to the draft_server library.
#pragma once

#include <memory>
#include <string>

#include "metrics/metrics.h"
#include "spec/controller.h"

namespace pipeinfer::draft_server {

struct DraftMetrics {
  // `model`: the value of the `model` label every series carries.
  explicit DraftMetrics(const std::string& model = "unknown");
  DraftMetrics(const DraftMetrics&) = delete;
  DraftMetrics& operator=(const DraftMetrics&) = delete;

  // Adds a finished session's controller counters to the service totals and to the
  // pipeinfer_spec_decode_* series of its speculation mode.
  void AddUp(const spec::Counters& c, const std::string& mode);

  std::shared_ptr<metrics::Metrics> registry;
  prometheus::Counter* requests_total;
  prometheus::Counter* requests_failed_total;
  prometheus::Counter* requests_cancelled_total;
  prometheus::Counter* prompt_tokens_total;
  prometheus::Counter* tokens_generated_total;
  prometheus::Counter* runs_launched_total;
  prometheus::Counter* pipeline_resets_total;
  // Crash recovery (generate_session.h): requests resumed on a new epoch, and how long each
  // waited for it.
  prometheus::Counter* recoveries_total;
  prometheus::Histogram* recovery_seconds;
  prometheus::Counter* runs_plain_total;
  prometheus::Counter* runs_speculative_total;
  prometheus::Counter* runs_cancelled_total;
  prometheus::Counter* runs_invalidated_total;
  prometheus::Counter* runs_tombstoned_total;
  prometheus::Counter* tokens_drafted_total;
  prometheus::Counter* tokens_accepted_total;
  prometheus::Counter* verifications_total;
  prometheus::Counter* model_failures_total;
  prometheus::Counter* tokens_accepted_sibling_total;
  prometheus::Gauge* sessions_open;
  prometheus::Gauge* pipeline_ready;
  prometheus::Histogram* request_seconds;
  prometheus::Histogram* ttft_seconds;
  // Admission (kv_admission.h).
  prometheus::Gauge* kv_waiting;
  prometheus::Gauge* kv_reserved_fraction;
  prometheus::Histogram* kv_wait_seconds;
  prometheus::Counter* kv_refused_total;
  // The speculation budget (spec/spec_budget.h).
  prometheus::Gauge* spec_budget_tokens;
  prometheus::Gauge* spec_tokens_in_flight;
  prometheus::Gauge* verified_tokens_in_flight;
  prometheus::Gauge* spec_acceptance;
  // Batched draft passes (draft_model.h).
  prometheus::Counter* draft_passes_total;
  prometheus::Histogram* draft_pass_sessions;
  prometheus::Histogram* draft_pass_seconds;
  // Live tracing (trace_hub.h): events built for Trace viewers.
  prometheus::Counter* trace_events_total;
  // vLLM-style speculative decoding series, labelled {mode} (and the registry's {model}).
  prometheus::Family<prometheus::Counter>* spec_decode_draft_tokens;
  prometheus::Family<prometheus::Counter>* spec_decode_accepted_tokens;
  prometheus::Family<prometheus::Counter>* spec_decode_verifications;
};

}  // namespace pipeinfer::draft_server
