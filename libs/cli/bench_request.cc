#include "cli/bench_request.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>

#include "draft_server/spec_proto.h"
#include "rpc/credentials.h"
#include "spec/knobs.h"

namespace pipeinfer::cli {

std::vector<Variant> BenchVariants(const BenchArgs& a) {
  std::vector<Variant> variants;
  for (const auto& m : a.modes) {
    if (std::any_of(variants.begin(), variants.end(),
                    [&](const Variant& v) { return v.label == m; })) {
      continue;
    }
    // --modes accepts only the table's mode names.
    variants.push_back({m, draft_server::ToProto(*spec::ParseMode(m)), false, false});
  }
  if (a.ablations) {
    variants.push_back({"pipeinfer --no-cancel", v1::SPEC_MODE_PIPEINFER, true, false});
    variants.push_back({"pipeinfer --no-continuous", v1::SPEC_MODE_PIPEINFER, false, true});
    variants.push_back({"sync --paper-tree", v1::SPEC_MODE_SYNC, false, false, true});
    variants.push_back({"pipeinfer --paper-tree", v1::SPEC_MODE_PIPEINFER, false, false, true});
  }
  return variants;
}

ClientAuth& BenchAuth() {
  static ClientAuth auth;
  return auth;
}

std::shared_ptr<grpc::Channel> BenchChannel(const std::string& addr) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto creds = rpc::MakeChannelCredentials(BenchAuth().tls());
  if (!creds.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(creds.status().message()).c_str());
    std::exit(1);
  }
  return grpc::CreateCustomChannel(addr, *creds, args);
}

void AddBenchAuth(grpc::ClientContext& ctx) {
  if (const std::string a = BenchAuth().Authorization(); !a.empty()) {
    ctx.AddMetadata("authorization", a);
  }
}

std::string CodeName(const absl::Status& s) { return absl::StatusCodeToString(s.code()); }

namespace {

absl::Status Run(v1::Router::Stub& stub, const BenchArgs& a, const std::string& prompt,
                 const Variant& v, RequestResult* r) {
  v1::CompletionRequest req;
  req.set_text(prompt);
  v1::GenerationOptions* o = req.mutable_options();
  o->set_max_tokens(static_cast<uint32_t>(a.max_tokens));
  o->mutable_sampling()->set_temperature(static_cast<float>(a.temperature));
  if (a.seed) o->mutable_sampling()->set_seed(*a.seed);
  o->set_ignore_eos(!a.stop_at_eos);
  v1::SpecConfig* spec = o->mutable_spec();
  *spec = draft_server::ToSpecConfig(a.knobs);
  spec->set_mode(v.mode);
  if (v.no_cancel) spec->set_no_cancel(true);
  if (v.no_continuous) spec->set_no_continuous(true);
  if (v.paper_tree) spec->set_paper_tree(true);

  grpc::ClientContext ctx;
  AddBenchAuth(ctx);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  r->start = BenchClock::now();
  auto reader = stub.Complete(&ctx, req);
  std::optional<BenchClock::time_point> last;
  v1::GenerateEvent ev;
  std::string error;
  bool finished = false;
  while (reader->Read(&ev)) {
    if (ev.has_delta()) {
      const int n = ev.delta().token_ids_size();
      if (n == 0) continue;  // text only: its tokens came earlier
      const auto now = BenchClock::now();
      if (!last) {
        r->ttft_s = std::chrono::duration<double>(now - r->start).count();
      } else {
        const double gap = std::chrono::duration<double>(now - *last).count();
        for (int i = 0; i < n; ++i) r->itl_s.push_back(gap / n);
      }
      last = now;
      for (uint32_t t : ev.delta().token_ids()) r->ids.push_back(t);
    } else if (ev.has_finished()) {
      finished = true;
      r->spec = ev.finished().spec();
      r->timings = ev.finished().timings();
      r->completion_tokens = ev.finished().usage().completion_tokens();
    } else if (ev.has_error()) {
      error = ev.error().message();
    }
  }
  const grpc::Status st = reader->Finish();
  r->end = BenchClock::now();
  r->wall_s = std::chrono::duration<double>(r->end - r->start).count();
  if (!st.ok()) {
    // gRPC's status codes are absl's, number for number.
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                        "Router.Complete (" + v.label +
                            ") failed: " + (error.empty() ? st.error_message() : error) +
                            " (gRPC code " + std::to_string(st.error_code()) + ")");
  }
  if (!finished) {
    return absl::InternalError("Router.Complete (" + v.label + ") ended without a Finished event");
  }
  if (r->completion_tokens == 0) r->completion_tokens = r->ids.size();
  if (r->spec.mode() != v.mode) {
    return absl::FailedPreconditionError(
        "requested mode " + v1::SpecMode_Name(v.mode) + " but the service ran " +
        v1::SpecMode_Name(r->spec.mode()) + " (is a draft model loaded?)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunRequest(v1::Router::Stub& stub, const BenchArgs& a, const std::string& prompt,
                        const Variant& v, RequestResult* r) {
  r->status = Run(stub, a, prompt, v, r);
  return r->status;
}

}  // namespace pipeinfer::cli
