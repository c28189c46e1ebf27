#include "spec/knob_flags.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"

namespace pipeinfer::spec {
namespace {

// Checks a flag's value with the table (ParseKnob into a scratch copy), so that CLI11 reports
// "--draft-max: draft_max must be in [1, 64], got 0" before anything is recorded.
CLI::Validator KnobValidator(const Knob& knob, KnobScope scope) {
  std::string desc;
  if (knob.type == KnobType::kMode) {
    desc = "in {plain, sync, pipeinfer}";
  } else {
    desc = absl::StrCat("in [", KnobMin(knob, scope), ", ", knob.max, "]");
  }
  return CLI::Validator(
      [&knob, scope](std::string& value) -> std::string {
        SpecParams scratch;
        const absl::Status st = ParseKnob(knob, value, scope, &scratch);
        return st.ok() ? std::string() : std::string(st.message());
      },
      desc, std::string(knob.name));
}

const char* TypeName(KnobType type) {
  switch (type) {
    case KnobType::kMode:
      return "MODE";
    case KnobType::kCount:
      return "UINT";
    case KnobType::kFraction:
      return "FLOAT";
    case KnobType::kSwitch:
      return "";
  }
  return "";
}

}  // namespace

void AddKnobFlags(CLI::App& app, KnobSettings* settings, const KnobFlagOptions& options) {
  for (const Knob& knob : Knobs()) {
    if (std::find(options.skip.begin(), options.skip.end(), knob.name) != options.skip.end()) {
      continue;
    }
    const std::string flag(knob.flag);
    std::string help(knob.help);
    if (knob.type == KnobType::kCount && !knob.zero_means.empty() &&
        options.scope == KnobScope::kDefault) {
      absl::StrAppend(&help, " (0 = ", std::string(knob.zero_means), ")");
    }
    const Knob* k = &knob;
    if (knob.type == KnobType::kSwitch) {
      // A switch only turns an ablation on; `--no-cancel=false` is accepted and means off.
      app.add_flag_function(
          flag, [settings, k](int64_t count) { (void)settings->Set(*k, count > 0 ? "1" : "0"); },
          help);
      continue;
    }
    const KnobScope scope = options.scope;
    CLI::Option* opt = app.add_option_function<std::string>(
        flag,
        [settings, k, scope](const std::string& value) {
          // The validator has accepted the value already.
          if (absl::Status st = settings->Set(*k, value, scope); !st.ok()) {
            throw CLI::ValidationError(std::string(k->flag), std::string(st.message()));
          }
        },
        help);
    opt->type_name(TypeName(knob.type));
    opt->check(KnobValidator(knob, scope));
    if (options.show_defaults && knob.type != KnobType::kMode) {
      opt->default_str(FormatKnob(knob, settings->params()));
    }
  }
}

}  // namespace pipeinfer::spec
