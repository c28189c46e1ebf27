#include "draft_server/draft_metrics.h"

namespace pipeinfer::draft_server {

// Registration order is the order GetStats lists them in.
DraftMetrics::DraftMetrics(const std::string& model)
    : registry(std::make_shared<metrics::Metrics>(
          "draft", "draft", std::map<std::string, std::string>{{"model", model}})),
      requests_total(&registry->Counter("requests_total", "Generate calls received")),
      requests_failed_total(
          &registry->Counter("requests_failed_total", "Generate calls that failed")),
      requests_cancelled_total(
          &registry->Counter("requests_cancelled_total", "Generate calls cancelled by the caller")),
      prompt_tokens_total(&registry->Counter("prompt_tokens_total", "Prompt tokens received")),
      tokens_generated_total(&registry->Counter("tokens_generated_total",
                                                "Tokens generated (committed and streamed)")),
      runs_launched_total(&registry->Counter("runs_launched_total", "Runs sent into the pipeline")),
      pipeline_resets_total(
          &registry->Counter("pipeline_resets_total", "Pipeline epochs lost (link failures)")),
      recoveries_total(&registry->Counter(
          "recoveries_total", "Requests resumed on a new pipeline epoch after a stage failure")),
      recovery_seconds(&registry->Histogram(
          "recovery_seconds",
          "Time from losing a request's pipeline epoch to re-opening it on the new one",
          metrics::LatencyBuckets())),
      runs_plain_total(&registry->Counter("runs_plain_total",
                                          "Plain runs sent (prefill chunks and next-token runs)")),
      runs_speculative_total(
          &registry->Counter("runs_speculative_total", "Speculative micro-batches sent")),
      runs_cancelled_total(
          &registry->Counter("runs_cancelled_total", "Runs cancelled after sending")),
      runs_invalidated_total(
          &registry->Counter("runs_invalidated_total", "Runs built on a rejected draft token")),
      runs_tombstoned_total(
          &registry->Counter("runs_tombstoned_total", "Outcomes that came back as tombstones")),
      tokens_drafted_total(
          &registry->Counter("tokens_drafted_total", "Draft tokens sent for verification")),
      tokens_accepted_total(
          &registry->Counter("tokens_accepted_total", "Draft tokens accepted by verification")),
      verifications_total(&registry->Counter("verifications_total", "Run results verified")),
      model_failures_total(&registry->Counter(
          "model_failures_total", "Draft model errors (speculation stopped for a request)")),
      tokens_accepted_sibling_total(&registry->Counter(
          "tokens_accepted_sibling_total", "Accepted draft tokens from sibling branches")),
      sessions_open(&registry->Gauge("sessions_open", "Generate calls in progress")),
      pipeline_ready(
          &registry->Gauge("pipeline_ready", "1 when the Pipeline and Results streams are open")),
      request_seconds(&registry->Histogram("request_seconds",
                                           "Generate call duration, successful calls",
                                           metrics::LatencyBuckets())),
      ttft_seconds(&registry->Histogram("time_to_first_token_seconds",
                                        "From the Generate call to its first token",
                                        metrics::LatencyBuckets())),
      kv_waiting(
          &registry->Gauge("kv_waiting", "Requests waiting for their KV reservation to fit")),
      kv_reserved_fraction(&registry->Gauge("kv_reserved_fraction",
                                            "KV blocks reserved / total, on the fullest stage")),
      kv_wait_seconds(&registry->Histogram("kv_wait_seconds",
                                           "How long admitted requests waited for their KV",
                                           metrics::LatencyBuckets())),
      kv_refused_total(&registry->Counter(
          "kv_refused_total",
          "Requests refused for KV: they can never fit, the wait queue was full, or they waited "
          "past the deadline")),
      spec_budget_tokens(
          &registry->Gauge("spec_budget_tokens",
                           "Speculative tokens the pipeline-wide budget allows in flight "
                           "(0: speculation does not pay at this load)")),
      spec_tokens_in_flight(
          &registry->Gauge("spec_tokens_in_flight", "Speculative run tokens in flight")),
      verified_tokens_in_flight(&registry->Gauge("verified_tokens_in_flight",
                                                 "Plain and other verified run tokens in flight")),
      spec_acceptance(&registry->Gauge(
          "spec_acceptance", "Drafted tokens accepted / drafted (recent moving average)")),
      draft_passes_total(&registry->Counter(
          "draft_passes_total", "Draft model forward passes (each serves one or more sessions)")),
      draft_pass_sessions(&registry->Histogram("draft_pass_sessions",
                                               "Sessions served by one draft forward pass",
                                               {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64})),
      draft_pass_seconds(&registry->Histogram(
          "draft_pass_seconds", "Duration of one draft forward pass", metrics::LatencyBuckets())),
      trace_events_total(&registry->Counter(
          "trace_events_total",
          "Run and request events built for live trace viewers (none while nobody watches)")),
      spec_decode_draft_tokens(
          &registry->CounterFamily("pipeinfer_spec_decode_num_draft_tokens_total",
                                   "Draft tokens sent for verification, by speculation mode")),
      spec_decode_accepted_tokens(
          &registry->CounterFamily("pipeinfer_spec_decode_num_accepted_tokens_total",
                                   "Draft tokens accepted by verification, by speculation mode")),
      spec_decode_verifications(&registry->CounterFamily(
          "pipeinfer_spec_decode_num_verifications_total",
          "Run results verified against the target, by speculation mode")) {}

void DraftMetrics::AddUp(const spec::Counters& c, const std::string& mode) {
  const prometheus::Labels labels{{"mode", mode}};
  spec_decode_draft_tokens->Add(labels).Increment(static_cast<double>(c.tokens_drafted));
  spec_decode_accepted_tokens->Add(labels).Increment(static_cast<double>(c.tokens_accepted));
  spec_decode_verifications->Add(labels).Increment(static_cast<double>(c.verifications));
  runs_plain_total->Increment(static_cast<double>(c.runs_plain));
  runs_speculative_total->Increment(static_cast<double>(c.runs_speculative));
  runs_cancelled_total->Increment(static_cast<double>(c.runs_cancelled));
  runs_invalidated_total->Increment(static_cast<double>(c.runs_invalidated));
  runs_tombstoned_total->Increment(static_cast<double>(c.runs_tombstoned));
  tokens_drafted_total->Increment(static_cast<double>(c.tokens_drafted));
  tokens_accepted_total->Increment(static_cast<double>(c.tokens_accepted));
  verifications_total->Increment(static_cast<double>(c.verifications));
  tokens_accepted_sibling_total->Increment(static_cast<double>(c.sibling_accepts));
  model_failures_total->Increment(static_cast<double>(c.draft_failures));
}

}  // namespace pipeinfer::draft_server
