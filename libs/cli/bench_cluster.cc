#include "cli/bench_cluster.h"

#include <grpcpp/grpcpp.h>

#include <chrono>

#include "cli/bench_request.h"
#include "draft_server/spec_proto.h"
#include "pipeinfer/v1/draft.grpc.pb.h"
#include "spec/knobs.h"

namespace pipeinfer::cli {

std::optional<std::map<std::string, double>> PipelineCounters(v1::Router::Stub& stub,
                                                              std::string* error, int* n_stages,
                                                              std::string* draft_addr) {
  grpc::ClientContext ctx;
  AddBenchAuth(ctx);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::ClusterStatsRequest req;
  req.set_include_stages(true);
  v1::ClusterStatsResponse resp;
  const grpc::Status st = stub.GetClusterStats(&ctx, req, &resp);
  if (!st.ok()) {
    *error = st.error_message();
    return std::nullopt;
  }
  std::map<std::string, double> out;
  int stages = 0;
  for (const auto& s : resp.services()) {
    std::string kind;
    if (s.service().rfind("stage", 0) == 0) kind = "stage";
    if (s.service().rfind("draft", 0) == 0) kind = "draft";
    if (kind.empty()) continue;
    if (s.has_error()) {
      *error = s.service() + ": " + s.error().message();
      return std::nullopt;
    }
    if (kind == "stage") ++stages;
    if (kind == "draft" && draft_addr && draft_addr->empty()) *draft_addr = s.address();
    for (const auto& c : s.counters()) out[kind + ":" + c.name()] += c.value();
  }
  if (n_stages) *n_stages = stages;
  return out;
}

std::map<std::string, double> CounterDelta(const std::map<std::string, double>& before,
                                           const std::map<std::string, double>& after) {
  std::map<std::string, double> d;
  for (const auto& [k, val] : after) {
    auto it = before.find(k);
    d[k] = val - (it == before.end() ? 0.0 : it->second);
  }
  return d;
}

ClusterInfo QueryClusterInfo(v1::Router::Stub& stub, const std::string& draft_arg) {
  ClusterInfo info;
  {
    grpc::ClientContext ctx;
    AddBenchAuth(ctx);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ListModelsResponse resp;
    if (stub.ListModels(&ctx, v1::ListModelsRequest(), &resp).ok() && resp.models_size() > 0) {
      const v1::ModelInfo& m = resp.models(0);
      info.model = m.id();
      info.draft_model = m.draft_model();
      info.n_stages = static_cast<int>(m.n_stages());
    }
  }
  std::string draft_addr = draft_arg;
  std::string err;
  int stats_stages = 0;
  PipelineCounters(stub, &err, &stats_stages, &draft_addr);
  if (info.n_stages == 0) info.n_stages = stats_stages;
  if (!draft_addr.empty()) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::DraftInfo di;
    if (v1::Draft::NewStub(BenchChannel(draft_addr))
            ->GetInfo(&ctx, v1::DraftInfoRequest(), &di)
            .ok()) {
      // (stage_addresses lists only the first and the last stage.)
      if (di.model().n_stages() > 0) info.n_stages = static_cast<int>(di.model().n_stages());
      if (!di.model().draft_model().empty()) info.draft_model = di.model().draft_model();
      // Every knob of the table, as `name=value`.
      if (auto d = draft_server::FromSpecConfig(di.defaults(), spec::SpecParams()); d.ok()) {
        for (const spec::Knob& k : spec::Knobs()) {
          if (k.type == spec::KnobType::kMode) continue;
          info.defaults += (info.defaults.empty() ? "" : " ") + std::string(k.name) + "=" +
                           spec::FormatKnob(k, *d);
        }
      }
    }
  }
  return info;
}

}  // namespace pipeinfer::cli
