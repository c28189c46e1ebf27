// Benchmark-only emulation of slow links between the processes of a local cluster
// (`pipeinfer up --emulate-link-mbps R`): every stage runs in its own network namespace, and
// consecutive processes of the pipeline talk over veth pairs whose both ends are rate limited with
// a `tc` token bucket (tbf). Latency is not emulated here (netem is not available everywhere); the
// stage and draft processes delay their own sends (`--emulate-link-us`).
//
// Topology for N stages (docs/link-emulation.md):
//   * namespace <prefix>-s<i> holds stage i; the draft service and the router stay in the root
//     namespace;
//   * data hop h (0..N): h = 0 joins the root namespace (draft) to stage 0, 0 < h < N joins stage
//     h-1 to stage h, h = N joins the last stage to the root namespace (the draft's Results
//     stream); each is rate limited on both ends' egress;
//   * management hop i joins the root namespace to stage i, unlimited: health checks, GetInfo and
//     /metrics from the root namespace use it.
// Every hop is a /30 inside one /22 block of 198.18.0.0/15 (RFC 2544's benchmarking range) that no
// interface or route of the root namespace uses.
//
// Every command runs from an argv (no shell); errors name the command and its stderr.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pipeinfer::cluster {

// One veth pair. An empty namespace is the root namespace.
struct VethHop {
  std::string ns_a, dev_a, addr_a;  // upstream end: address without prefix length
  std::string ns_b, dev_b, addr_b;  // downstream end
  bool limited = true;              // tbf on both ends
};

struct LinkTopology {
  double rate_mbps = 0;  // per direction of every data hop
  int64_t burst_bytes = 0;
  std::string prefix;                   // "pil<k>": names of namespaces and devices start with it
  std::string block;                    // "198.18.A.B/22"
  std::vector<std::string> namespaces;  // stage i's namespace
  std::vector<VethHop> data;            // N + 1 hops (see above)
  std::vector<VethHop> management;      // N hops

  bool empty() const { return namespaces.empty(); }
  int stages() const { return static_cast<int>(namespaces.size()); }
  // Stage i's address on the hop from its upstream peer (what the previous stage, or for stage 0
  // the draft service, connects to).
  const std::string& StageDataAddress(int i) const { return data[i].addr_b; }
  // The last stage's address on the hop to the root namespace (the draft's Results stream).
  const std::string& LastStageResultsAddress() const { return data.back().addr_a; }
  // Stage i's address on its management hop (health checks, /metrics, `pipeinfer stats`).
  const std::string& StageManagementAddress(int i) const { return management[i].addr_b; }
  // Devices that live in the root namespace (removed explicitly, in case a namespace outlives
  // its name because a process is still inside).
  std::vector<std::string> RootDevices() const;
};

// OK when this process may create namespaces and the tools exist; otherwise the reason, e.g.
// "--emulate-link-mbps needs root (network namespaces and tc)".
absl::Status CheckLinkEmulationAvailable();

// Chooses a free /22 block and names for `stages` stages (reads the root namespace's addresses,
// routes, links and namespaces). Creates nothing.
absl::StatusOr<LinkTopology> PlanLinks(int stages, double rate_mbps);

// Creates the namespaces, veth pairs, addresses and tbf qdiscs of `t`. On failure removes what it
// created and returns the failing command's error.
absl::Status CreateLinks(const LinkTopology& t);

// Removes everything `t` names that still exists: kills processes left inside its namespaces,
// deletes the namespaces and the root-side devices. Missing pieces are not an error. One line
// per removed namespace on `report` (if given).
absl::Status RemoveLinks(const LinkTopology& t, std::vector<std::string>* report = nullptr);

// The state file's "links" object, as JSON text, and back.
std::string LinkTopologyToJson(const LinkTopology& t);
absl::StatusOr<LinkTopology> LinkTopologyFromJson(const std::string& json);

// Runs a tool (argv[0] "ip" or "tc" is resolved to its path) and returns its stdout; an error
// with the command line and its stderr when it exits non-zero. Exposed for tests.
absl::StatusOr<std::string> RunNetTool(const std::vector<std::string>& argv);

}  // namespace pipeinfer::cluster
