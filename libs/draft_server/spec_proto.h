// The speculation settings and counters on the wire: SpecConfig <-> spec::SpecParams (with the
// SpecMode <-> spec::Mode mapping) and SpecCounters from spec::Counters. The one place that
// converts them, for the draft service and for clients (`pipeinfer complete`, `pipeinfer bench`).
// Driven by the knob table (spec/knobs.h): SpecConfig's fields carry the knobs' names, so a knob
// added to the table and to the message is converted without code here.
//
// Includes the generated message header (no gRPC); spec/ itself stays free of protobuf.
#pragma once

#include "absl/status/statusor.h"
#include "pipeinfer/v1/common.pb.h"
#include "spec/controller.h"
#include "spec/knobs.h"
#include "spec/params.h"

namespace pipeinfer::draft_server {

v1::SpecMode ToProto(spec::Mode mode);
// UNSPECIFIED is not a mode (it means "the default"): INVALID_ARGUMENT, like an unknown value.
absl::StatusOr<spec::Mode> ModeFromProto(v1::SpecMode mode);

// A request's SpecConfig resolved against the service defaults: every field that is set (the mode
// unless UNSPECIFIED) replaces its default after the table's request-range check; the result is
// then checked as a whole. INVALID_ARGUMENT with the table's message otherwise.
absl::StatusOr<spec::SpecParams> FromSpecConfig(const v1::SpecConfig& config,
                                                const spec::SpecParams& defaults);
// Every field set (DraftInfo.defaults), except a knob whose 0 means "derived" (max_inflight): 0 is
// not a request's value, so it is left unset (= the service's choice).
v1::SpecConfig ToSpecConfig(const spec::SpecParams& params);
// Only the given knobs set: a client's overrides (the rest is left to the service's defaults).
v1::SpecConfig ToSpecConfig(const spec::KnobSettings& settings);

v1::SpecCounters ToSpecCounters(spec::Mode mode, const spec::Counters& counters);

}  // namespace pipeinfer::draft_server
