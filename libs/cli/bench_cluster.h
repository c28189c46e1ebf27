// What `pipeinfer bench` asks the cluster besides completions: its shape for the report header
// (Router.ListModels, Draft.GetInfo) and the pipeline's counters for --stats
// (Router.GetClusterStats). Private to the cli library.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "pipeinfer/v1/router.grpc.pb.h"

namespace pipeinfer::cli {

// Counter names of the --stats columns.
inline constexpr const char* kStatSkipped = "stage:runs_skipped_total";
inline constexpr const char* kStatStopped = "stage:runs_stopped_total";
inline constexpr const char* kStatStageBytes = "stage:sent_bytes_total";

// Counters of the pipeline (draft service and stages) summed over services, keyed
// "stage:<name>" for the sum over stages and "draft:<name>" for draft replicas.
std::optional<std::map<std::string, double>> PipelineCounters(v1::Router::Stub& stub,
                                                              std::string* error,
                                                              int* n_stages = nullptr,
                                                              std::string* draft_addr = nullptr);

// after - before, per counter.
std::map<std::string, double> CounterDelta(const std::map<std::string, double>& before,
                                           const std::map<std::string, double>& after);

struct ClusterInfo {
  std::string model = "unknown";
  std::string draft_model;
  int n_stages = 0;
  std::string defaults;  // the draft service's speculation defaults, when known
};

// Best effort: what cannot be asked stays unknown. `draft_arg` is --draft (else the draft replica
// the router lists).
ClusterInfo QueryClusterInfo(v1::Router::Stub& stub, const std::string& draft_arg);

}  // namespace pipeinfer::cli
