// The speculation knobs, in one table. Every place that names a knob reads it from here: the
// draft service's flags and `pipeinfer up|complete|bench` (knob_flags.h adds the flags), the
// cluster YAML's `spec:` keys, the arguments `up` passes to pipeinfer-draft, and the wire's
// SpecConfig (draft_server/spec_proto.h; its fields carry the same names). A knob has one name
// (`draft_max`: config key and SpecConfig field; `--draft-max`: flag), one help text with the
// PipeInfer paper's meaning, one type and one range, so a range is enforced with the same message
// wherever a value enters. No CLI library, no gRPC: plain C++ over SpecParams.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "spec/params.h"

namespace pipeinfer::spec {

enum class KnobType {
  kMode,      // plain | sync | pipeinfer
  kCount,     // a whole number in [min, max]
  kFraction,  // a real number in [min, max]
  kSwitch,    // an ablation: true | false (a flag without a value)
};

// Where a value comes from, which decides the range of a knob whose 0 means "derived": a service
// default (flags of pipeinfer-draft and `up`, the YAML file) may be 0; a request's override
// (SpecConfig, `complete` and `bench` flags) names a value, so it starts at 1.
enum class KnobScope { kDefault, kRequest };

struct Knob {
  std::string_view name;  // config key and SpecConfig field name
  std::string_view flag;  // the command-line flag: "--" + name with '-' for '_'
  std::string_view help;  // what it does, in the paper's terms
  KnobType type = KnobType::kCount;
  double min = 0, max = 0;  // inclusive range of kCount and kFraction values
  // kCount: what 0 means as a service default (then a request's range starts at 1); empty = 0 is
  // an ordinary value (or out of range).
  std::string_view zero_means;
  // The SpecParams field; exactly the one that matches `type` is set.
  Mode SpecParams::*mode = nullptr;
  uint32_t SpecParams::*count = nullptr;
  float SpecParams::*fraction = nullptr;
  bool SpecParams::*on = nullptr;
};

// Every knob, in SpecParams' order.
std::span<const Knob> Knobs();
// The knob called `name` ("draft_max"); null for an unknown name.
const Knob* FindKnob(std::string_view name);

// The lower end of a kCount or kFraction knob's range in `scope`.
double KnobMin(const Knob& knob, KnobScope scope);
// Checks a kCount or kFraction value against the knob's range in `scope`. The message is the same
// at every entry point: "draft_max must be in [1, 64], got 0".
absl::Status CheckKnob(const Knob& knob, double value, KnobScope scope = KnobScope::kDefault);
// Parses `text` (a flag's value or a YAML scalar: a mode name, a number, true/false) for `knob`,
// checks it and stores it in `*params`.
absl::Status ParseKnob(const Knob& knob, std::string_view text, KnobScope scope,
                       SpecParams* params);
// Stores a kCount, kFraction or kSwitch value (a switch is on when value != 0) after CheckKnob.
absl::Status SetKnobNumber(const Knob& knob, double value, KnobScope scope, SpecParams* params);
// The knob's value as ParseKnob reads it back: "pipeinfer", "4", "0.5", "true".
std::string FormatKnob(const Knob& knob, const SpecParams& params);

// Some knobs given explicitly (by flags, a config file or a request) over defaults: the draft
// service overlays them on SpecParams' defaults, clients send only these, and `up` forwards only
// these to pipeinfer-draft.
class KnobSettings {
 public:
  KnobSettings() = default;
  explicit KnobSettings(const SpecParams& defaults) : params_(defaults) {}

  // ParseKnob into params() and marks the knob given.
  absl::Status Set(const Knob& knob, std::string_view text, KnobScope scope = KnobScope::kDefault);
  bool given(const Knob& knob) const;
  bool given(std::string_view name) const;
  // The defaults with the given knobs' values.
  const SpecParams& params() const { return params_; }
  // `base` with the given knobs' values (the rest of `base` untouched).
  SpecParams ApplyTo(SpecParams base) const;

 private:
  SpecParams params_;
  uint32_t given_ = 0;  // bit i: Knobs()[i]
};

}  // namespace pipeinfer::spec
