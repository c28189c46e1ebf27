#include "draft_server/spec_proto.h"

#include <google/protobuf/descriptor.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace pipeinfer::draft_server {
namespace {

using google::protobuf::FieldDescriptor;

// SpecConfig's field for a knob (same name); null when the message lacks it, which the knob table
// test rules out.
const FieldDescriptor* FieldFor(const spec::Knob& knob) {
  return v1::SpecConfig::descriptor()->FindFieldByName(std::string(knob.name));
}

void SetField(const spec::Knob& knob, const spec::SpecParams& params, v1::SpecConfig* config) {
  const FieldDescriptor* f = FieldFor(knob);
  if (f == nullptr) return;
  const google::protobuf::Reflection* r = config->GetReflection();
  switch (knob.type) {
    case spec::KnobType::kMode:
      r->SetEnumValue(config, f, ToProto(params.*knob.mode));
      break;
    case spec::KnobType::kCount:
      // 0 = "derived" is the service's choice, which SpecConfig expresses by leaving it unset.
      if (params.*knob.count == 0 && !knob.zero_means.empty()) break;
      r->SetUInt32(config, f, params.*knob.count);
      break;
    case spec::KnobType::kFraction:
      r->SetFloat(config, f, params.*knob.fraction);
      break;
    case spec::KnobType::kSwitch:
      r->SetBool(config, f, params.*knob.on);
      break;
  }
}

}  // namespace

v1::SpecMode ToProto(spec::Mode mode) {
  switch (mode) {
    case spec::Mode::kPlain:
      return v1::SPEC_MODE_PLAIN;
    case spec::Mode::kSync:
      return v1::SPEC_MODE_SYNC;
    case spec::Mode::kPipeInfer:
      return v1::SPEC_MODE_PIPEINFER;
  }
  return v1::SPEC_MODE_UNSPECIFIED;
}

absl::StatusOr<spec::Mode> ModeFromProto(v1::SpecMode mode) {
  switch (mode) {
    case v1::SPEC_MODE_PLAIN:
      return spec::Mode::kPlain;
    case v1::SPEC_MODE_SYNC:
      return spec::Mode::kSync;
    case v1::SPEC_MODE_PIPEINFER:
      return spec::Mode::kPipeInfer;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown speculation mode ", static_cast<int>(mode)));
  }
}

absl::StatusOr<spec::SpecParams> FromSpecConfig(const v1::SpecConfig& config,
                                                const spec::SpecParams& defaults) {
  spec::SpecParams p = defaults;
  const google::protobuf::Reflection* r = config.GetReflection();
  for (const spec::Knob& knob : spec::Knobs()) {
    const FieldDescriptor* f = FieldFor(knob);
    if (f == nullptr) {
      return absl::InternalError(absl::StrCat("SpecConfig has no field ", std::string(knob.name)));
    }
    if (knob.type == spec::KnobType::kMode) {
      const auto mode = static_cast<v1::SpecMode>(r->GetEnumValue(config, f));
      if (mode == v1::SPEC_MODE_UNSPECIFIED) continue;
      absl::StatusOr<spec::Mode> m = ModeFromProto(mode);
      if (!m.ok()) return m.status();
      p.*knob.mode = *m;
      continue;
    }
    if (!r->HasField(config, f)) continue;
    double value = 0;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_UINT32:
        value = r->GetUInt32(config, f);
        break;
      case FieldDescriptor::CPPTYPE_FLOAT:
        value = r->GetFloat(config, f);
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        value = r->GetBool(config, f) ? 1.0 : 0.0;
        break;
      default:
        return absl::InternalError(
            absl::StrCat("SpecConfig.", std::string(knob.name), " has an unexpected type"));
    }
    if (absl::Status st = spec::SetKnobNumber(knob, value, spec::KnobScope::kRequest, &p);
        !st.ok()) {
      return st;
    }
  }
  if (absl::Status st = spec::Validate(p); !st.ok()) return st;
  return p;
}

v1::SpecConfig ToSpecConfig(const spec::SpecParams& params) {
  v1::SpecConfig c;
  for (const spec::Knob& knob : spec::Knobs()) SetField(knob, params, &c);
  return c;
}

v1::SpecConfig ToSpecConfig(const spec::KnobSettings& settings) {
  v1::SpecConfig c;
  for (const spec::Knob& knob : spec::Knobs()) {
    if (settings.given(knob)) SetField(knob, settings.params(), &c);
  }
  return c;
}

v1::SpecCounters ToSpecCounters(spec::Mode mode, const spec::Counters& c) {
  v1::SpecCounters p;
  p.set_mode(ToProto(mode));
  p.set_runs_plain(c.runs_plain);
  p.set_runs_speculative(c.runs_speculative);
  p.set_runs_cancelled(c.runs_cancelled);
  p.set_runs_tombstoned(c.runs_tombstoned);
  p.set_tokens_drafted(c.tokens_drafted);
  p.set_tokens_accepted(c.tokens_accepted);
  p.set_verifications(c.verifications);
  p.set_runs_invalidated(c.runs_invalidated);
  p.set_tokens_accepted_sibling(c.sibling_accepts);
  return p;
}

}  // namespace pipeinfer::draft_server
