#include "router/generation.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "pipeinfer/v1/draft.grpc.pb.h"
#include "router/draft_call.h"
#include "router/draft_pool.h"
#include "router/router_metrics.h"
#include "router/stop_matcher.h"
#include "tokenizer/tokenizer.h"

namespace pipeinfer::router {

using Clock = std::chrono::steady_clock;

Generator::Generator(DraftPool& pool, const tokenizer::Tokenizer& tok, RouterMetrics& metrics)
    : pool_(pool), tok_(tok), metrics_(metrics) {}

Error ClientGone() { return Error{absl::StatusCode::kCancelled, "the client went away", "", ""}; }

std::optional<Error> Generator::Generate(GenRequest& g, DraftCall& call, const GenSink& sink,
                                         GenResult* result, bool* started) {
  *started = false;
  std::vector<const DraftPool::Replica*> tried;
  std::optional<Error> last;
  for (;;) {
    std::unique_ptr<DraftPool::Lease> lease = pool_.Pick(tried);
    if (!lease) {
      if (last) return last;
      return Error{absl::StatusCode::kUnavailable,
                   pool_.size() == 1 ? "the draft service is not serving"
                                     : "no draft service replica is serving",
                   "", ""};
    }
    grpc::ClientContext* ctx = call.NewAttempt();
    if (ctx == nullptr) return ClientGone();
    DraftPool::Replica& r = lease->replica();
    g.replica = r.address;
    bool retry = false;
    std::optional<Error> e = Attempt(g, ctx, r.channel, sink, result, started, &retry);
    if (!retry) return e;
    spdlog::warn("draft replica {} unavailable ({}); trying another", r.address,
                 e ? e->message : "");
    pool_.Eject(r);
    tried.push_back(&r);
    last = std::move(e);
  }
}

std::optional<Error> Generator::Attempt(GenRequest& g, grpc::ClientContext* ctx,
                                        const std::shared_ptr<grpc::Channel>& channel,
                                        const GenSink& sink, GenResult* result, bool* started,
                                        bool* retry) {
  const auto t_start = Clock::now();
  ctx->AddMetadata("x-request-id", g.request_id);
  v1::GenerateRequest req;
  req.set_request_id(g.request_id);
  for (uint32_t id : g.prompt) req.add_prompt_token_ids(id);
  if (g.max_tokens) req.set_max_tokens(*g.max_tokens);
  *req.mutable_sampling() = g.sampling;
  for (uint32_t id : g.stop_token_ids) req.add_stop_token_ids(id);
  req.set_ignore_eos(g.ignore_eos);
  *req.mutable_spec() = g.spec;
  if (g.logprobs) req.set_logprobs(*g.logprobs);
  if (g.deadline) ctx->set_deadline(*g.deadline);

  // A stub is two pointers and the method names; the channel (and its connection) is shared.
  auto stub = v1::Draft::NewStub(channel);
  auto reader = stub->Generate(ctx, req);
  RouterMetrics::ModeSeries& series = metrics_.Mode(g.mode);
  tokenizer::IncrementalDetokenizer detok(tok_);
  StopMatcher stops(g.stops);
  result->prompt_tokens = static_cast<uint32_t>(g.prompt.size());
  v1::GenerateResponse ev;
  bool finished = false, stopped = false, client_gone = false;
  std::optional<Error> draft_error;
  Clock::time_point last_token;
  uint32_t sent_index = 0;
  std::vector<uint32_t> unsent_ids;
  std::vector<TokenLogprobs> unsent_lps;
  while (reader->Read(&ev)) {
    if (sink.cancelled && sink.cancelled()) {
      client_gone = true;
      ctx->TryCancel();
      break;
    }
    if (ev.has_tokens()) {
      const auto now = Clock::now();
      const int n = ev.tokens().token_ids_size();
      if (result->completion_tokens == 0) {
        g.ttft_s = std::chrono::duration<double>(now - g.arrival).count();
        series.ttft->Observe(g.ttft_s);
        result->timings.set_ttft_us(
            std::chrono::duration_cast<std::chrono::microseconds>(now - t_start).count());
      } else if (n > 0) {
        const double dt = std::chrono::duration<double>(now - last_token).count() / n;
        for (int i = 0; i < n; ++i) series.itl->Observe(dt);
      }
      last_token = now;
      result->completion_tokens += n;
      series.generation_tokens->Increment(n);
      result->spec = ev.tokens().counters();
      std::string text;
      for (uint32_t id : ev.tokens().token_ids()) {
        unsent_ids.push_back(id);
        text += detok.Push(static_cast<int32_t>(id));
      }
      if (g.logprobs) {
        if (ev.tokens().logprobs_size() != n) {
          draft_error =
              Error{absl::StatusCode::kInternal,
                    "the draft service sent tokens without their log-probabilities", "", ""};
          ctx->TryCancel();
          break;
        }
        for (const v1::TokenLogprob& lp : ev.tokens().logprobs()) {
          TokenLogprobs t;
          t.logprob = lp.logprob();
          t.top_ids.assign(lp.top_token_ids().begin(), lp.top_token_ids().end());
          t.top_logprobs.assign(lp.top_logprobs().begin(), lp.top_logprobs().end());
          unsent_lps.push_back(std::move(t));
        }
      }
      std::string out = stops.Push(text, &result->stop_sequence);
      if (!result->stop_sequence.empty()) stopped = true;
      if (!out.empty() || !unsent_ids.empty()) {
        if (!sink.on_delta(out, unsent_ids, sent_index, unsent_lps)) {
          client_gone = true;
          ctx->TryCancel();
          break;
        }
        *started = true;
        sent_index += static_cast<uint32_t>(unsent_ids.size());
        unsent_ids.clear();
        unsent_lps.clear();
      }
      if (stopped) {
        ctx->TryCancel();
        break;
      }
    } else if (ev.has_finished()) {
      finished = true;
      result->finish = ev.finished().finish_reason();
      result->spec = ev.finished().counters();
      result->timings.set_prefill_us(ev.finished().timings().prefill_us());
      result->timings.set_decode_us(ev.finished().timings().decode_us());
    } else if (ev.has_error()) {
      draft_error =
          Error{static_cast<absl::StatusCode>(ev.error().code()), ev.error().message(), "", ""};
    }
  }
  const grpc::Status st = reader->Finish();
  result->timings.set_total_us(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t_start).count());
  // Also when the stream ended because the caller cancelled the call for a client that went away
  // while no event was arriving (e.g. during the prefill).
  if (!client_gone && !finished && !stopped && sink.cancelled && sink.cancelled()) {
    client_gone = true;
  }
  if (client_gone) return ClientGone();
  if (stopped) {
    result->finish = v1::FINISH_REASON_STOP;
    return std::nullopt;
  }
  if (!st.ok() || !finished) {
    // Nothing streamed and the replica could not take the call: another replica may.
    *retry = !*started && result->completion_tokens == 0 && !draft_error &&
             st.error_code() == grpc::StatusCode::UNAVAILABLE;
    if (draft_error) return draft_error;
    Error e{st.ok() ? absl::StatusCode::kInternal : static_cast<absl::StatusCode>(st.error_code()),
            st.ok() ? "the draft service ended the stream without a result"
                    : absl::StrCat("draft service: ", st.error_message()),
            "", ""};
    if (e.code == absl::StatusCode::kOutOfRange) e.oai_code = "context_length_exceeded";
    if (e.code == absl::StatusCode::kResourceExhausted) e.oai_code = "rate_limit_exceeded";
    return e;
  }
  // The rest of the text (an incomplete character becomes U+FFFD).
  std::string tail = stops.Push(detok.Flush(), &result->stop_sequence);
  if (!result->stop_sequence.empty()) {
    result->finish = v1::FINISH_REASON_STOP;
  } else {
    tail += stops.Flush();
  }
  if (!tail.empty() || !unsent_ids.empty()) {
    if (!sink.on_delta(tail, unsent_ids, sent_index, unsent_lps)) return ClientGone();
    *started = true;
  }
  return std::nullopt;
}

}  // namespace pipeinfer::router
