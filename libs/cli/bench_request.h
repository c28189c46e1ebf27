// One `pipeinfer bench` request through Router.Complete, timed on the client: the table rows
// (modes with their ablation switches) and what one request measured. Private to the cli library.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cli/bench_args.h"
#include "cli/client_auth.h"
#include "pipeinfer/v1/router.grpc.pb.h"

namespace pipeinfer::cli {

using BenchClock = std::chrono::steady_clock;

// One row of the table: a mode with its ablation switches.
struct Variant {
  std::string label;
  v1::SpecMode mode = v1::SPEC_MODE_UNSPECIFIED;
  bool no_cancel = false;
  bool no_continuous = false;
  bool paper_tree = false;  // the paper's micro-batches instead of the dynamic token tree

  // Plain decoding without ablations: the baseline of "speedup vs plain".
  bool IsPlain() const { return mode == v1::SPEC_MODE_PLAIN && !no_cancel && !no_continuous; }
};

// --modes in their order (each once), then the ablation rows when --ablations is given.
std::vector<Variant> BenchVariants(const BenchArgs& a);

struct RequestResult {
  size_t variant = 0;
  size_t prompt = 0;
  int repeat = 0;                     // the pass over the prompts this request belongs to
  int concurrency = 0;                // client threads of its level; 0: one at a time
  absl::Status status;                // the call's gRPC status (same codes as absl's)
  BenchClock::time_point start, end;  // client: call start, end of stream
  std::vector<uint32_t> ids;
  double wall_s = 0;                          // client: call start to end of stream
  double ttft_s = NAN;                        // client: call start to the first delta with tokens
  std::vector<double> itl_s;                  // client: one sample per token after the first delta
  uint64_t completion_tokens = 0;             // Usage.completion_tokens (else the ids received)
  v1::SpecCounters spec;                      // Finished.spec
  v1::Timings timings;                        // Finished.timings (router-measured)
  std::map<std::string, double> stats_delta;  // --stats: pipeline counter deltas over the request
};

// The bench's TLS directory and API key (client_auth.h), set once from its flags.
ClientAuth& BenchAuth();
// A channel with BenchAuth()'s credentials; AddBenchAuth puts its key on a call.
std::shared_ptr<grpc::Channel> BenchChannel(const std::string& addr);
void AddBenchAuth(grpc::ClientContext& ctx);

// Runs one request and fills `r` (also r->status). The status is the call's gRPC status (a full
// admission queue is RESOURCE_EXHAUSTED), INTERNAL for a stream without a Finished event, and
// FAILED_PRECONDITION when the service ran another mode than the one requested.
absl::Status RunRequest(v1::Router::Stub& stub, const BenchArgs& a, const std::string& prompt,
                        const Variant& v, RequestResult* r);

// The name of a status's code ("RESOURCE_EXHAUSTED"), the key errors are counted by.
std::string CodeName(const absl::Status& s);

}  // namespace pipeinfer::cli
