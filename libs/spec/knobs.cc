#include "spec/knobs.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace pipeinfer::spec {
namespace {

Knob Base(std::string_view name, std::string_view flag, std::string_view help, KnobType type) {
  Knob k;
  k.name = name;
  k.flag = flag;
  k.help = help;
  k.type = type;
  return k;
}

Knob ModeKnob() {
  Knob k = Base("mode", "--mode",
                "Speculation mode: plain (no speculation: one next-token run at a time), sync "
                "(standard speculative decoding: draft, send one run, wait, verify) or pipeinfer "
                "(asynchronous continuous speculation with early cancellation)",
                KnobType::kMode);
  k.mode = &SpecParams::mode;
  return k;
}

Knob Count(std::string_view name, std::string_view flag, std::string_view help, double min,
           double max, uint32_t SpecParams::*field, std::string_view zero_means = {}) {
  Knob k = Base(name, flag, help, KnobType::kCount);
  k.min = min;
  k.max = max;
  k.zero_means = zero_means;
  k.count = field;
  return k;
}

Knob Fraction(std::string_view name, std::string_view flag, std::string_view help,
              float SpecParams::*field) {
  Knob k = Base(name, flag, help, KnobType::kFraction);
  k.min = 0.0;
  k.max = 1.0;
  k.fraction = field;
  return k;
}

Knob Switch(std::string_view name, std::string_view flag, std::string_view help,
            bool SpecParams::*field) {
  Knob k = Base(name, flag, help, KnobType::kSwitch);
  k.on = field;
  return k;
}

// The table. The names are also SpecConfig's field names (common.proto) and the README's list.
const std::array<Knob, 11>& Table() {
  static const std::array<Knob, 11> kKnobs = {
      ModeKnob(),
      Count("draft_max", "--draft-max",
            "Most draft tokens in one speculative run (all branches together)", 0, 64,
            &SpecParams::draft_max,
            "self-tuned: the dynamic tree sizes each run, at most 16; 4 with --paper-tree"),
      Fraction("p_accept", "--p-accept",
               "Base draft confidence cutoff: a branch keeps drafting while the draft's top-1 "
               "probability is >= p_accept + adjust",
               &SpecParams::p_accept),
      Fraction("p_split", "--p-split",
               "Base split threshold for token trees: an alternative whose draft probability is "
               "> p_split + adjust opens a sibling branch (used when max_branches > 1)",
               &SpecParams::p_split),
      Fraction("p_recovery", "--p-recovery",
               "Cutoff increase (adjust += p_recovery) per micro-batch already launched in the "
               "current speculation burst",
               &SpecParams::p_recovery),
      Fraction("p_decay", "--p-decay",
               "Cutoff decrease (adjust -= p_decay) per consecutive failed drafting attempt (reset "
               "when a verification emits a token)",
               &SpecParams::p_decay),
      Count("max_branches", "--max-branches",
            "Most branches (token-tree leaves) per micro-batch; 1 = chains, more = sibling leaves",
            1, 16, &SpecParams::max_branches),
      Count("max_inflight", "--max-inflight",
            "Most runs of one request in flight at once, plain and speculative together", 0, 256,
            &SpecParams::max_inflight, "derived: number of stages + 1"),
      Switch("no_cancel", "--no-cancel",
             "Ablation: never cancel mis-speculated runs (they are computed to the end and their "
             "results discarded)",
             &SpecParams::no_cancel),
      Switch("no_continuous", "--no-continuous",
             "Ablation: no continuous speculation; draft only right after a verification (at most "
             "one micro-batch per result)",
             &SpecParams::no_continuous),
      Switch(
          "paper_tree", "--paper-tree",
          "Ablation: the PipeInfer paper's micro-batches (a main chain with sibling leaves, cut "
          "by p_accept, p_split, p_recovery and p_decay) instead of the self-tuned dynamic token "
          "tree",
          &SpecParams::paper_tree),
  };
  return kKnobs;
}

size_t IndexOf(const Knob& knob) {
  const auto& t = Table();
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i].name == knob.name) return i;
  }
  return t.size();
}

// absl::string_view is not std::string_view in this Abseil build.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// The shortest text that reads back as the same float ("0.1", not "0.100000001").
std::string FloatText(float v) {
  char buf[32];
  for (int precision = 6; precision <= 9; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, static_cast<double>(v));
    if (std::strtof(buf, nullptr) == v) break;
  }
  return buf;
}

}  // namespace

std::span<const Knob> Knobs() { return Table(); }

const Knob* FindKnob(std::string_view name) {
  for (const Knob& k : Table()) {
    if (k.name == name) return &k;
  }
  return nullptr;
}

double KnobMin(const Knob& knob, KnobScope scope) {
  // A request names a value; 0 ("derived") is the service's to choose.
  return scope == KnobScope::kRequest && !knob.zero_means.empty() ? std::max(knob.min, 1.0)
                                                                  : knob.min;
}

absl::Status CheckKnob(const Knob& knob, double value, KnobScope scope) {
  if (knob.type != KnobType::kCount && knob.type != KnobType::kFraction) {
    return absl::OkStatus();
  }
  const bool zero_derived = !knob.zero_means.empty();
  const double lo = KnobMin(knob, scope);
  if (std::isfinite(value) && value >= lo && value <= knob.max) return absl::OkStatus();
  const std::string note = scope == KnobScope::kDefault && zero_derived
                               ? absl::StrCat(" (0 = ", Sv(knob.zero_means), ")")
                               : std::string();
  return absl::InvalidArgumentError(
      absl::StrCat(Sv(knob.name), " must be in [", lo, ", ", knob.max, "]", note, ", got ", value));
}

absl::Status SetKnobNumber(const Knob& knob, double value, KnobScope scope, SpecParams* params) {
  switch (knob.type) {
    case KnobType::kMode:
      return absl::InternalError(absl::StrCat(Sv(knob.name), " is not a number"));
    case KnobType::kCount:
      if (absl::Status st = CheckKnob(knob, value, scope); !st.ok()) return st;
      if (value != std::floor(value)) {
        return absl::InvalidArgumentError(
            absl::StrCat(Sv(knob.name), " must be a whole number, got ", value));
      }
      params->*knob.count = static_cast<uint32_t>(value);
      return absl::OkStatus();
    case KnobType::kFraction:
      if (absl::Status st = CheckKnob(knob, value, scope); !st.ok()) return st;
      params->*knob.fraction = static_cast<float>(value);
      return absl::OkStatus();
    case KnobType::kSwitch:
      params->*knob.on = value != 0.0;
      return absl::OkStatus();
  }
  return absl::InternalError("unknown knob type");
}

absl::Status ParseKnob(const Knob& knob, std::string_view text, KnobScope scope,
                       SpecParams* params) {
  const absl::string_view t(text.data(), text.size());
  switch (knob.type) {
    case KnobType::kMode: {
      absl::StatusOr<Mode> m = ParseMode(text);
      if (!m.ok()) return m.status();
      params->*knob.mode = *m;
      return absl::OkStatus();
    }
    case KnobType::kCount: {
      int64_t v = 0;
      if (!absl::SimpleAtoi(t, &v)) {
        return absl::InvalidArgumentError(
            absl::StrCat(Sv(knob.name), " must be a whole number, got '", t, "'"));
      }
      return SetKnobNumber(knob, static_cast<double>(v), scope, params);
    }
    case KnobType::kFraction: {
      double v = 0;
      if (!absl::SimpleAtod(t, &v)) {
        return absl::InvalidArgumentError(
            absl::StrCat(Sv(knob.name), " must be a number, got '", t, "'"));
      }
      return SetKnobNumber(knob, v, scope, params);
    }
    case KnobType::kSwitch: {
      bool v = false;
      if (!absl::SimpleAtob(t, &v)) {
        return absl::InvalidArgumentError(
            absl::StrCat(Sv(knob.name), " must be true or false, got '", t, "'"));
      }
      params->*knob.on = v;
      return absl::OkStatus();
    }
  }
  return absl::InternalError("unknown knob type");
}

std::string FormatKnob(const Knob& knob, const SpecParams& params) {
  switch (knob.type) {
    case KnobType::kMode:
      return std::string(ModeName(params.*knob.mode));
    case KnobType::kCount:
      return std::to_string(params.*knob.count);
    case KnobType::kFraction:
      return FloatText(params.*knob.fraction);
    case KnobType::kSwitch:
      return params.*knob.on ? "true" : "false";
  }
  return "";
}

absl::Status KnobSettings::Set(const Knob& knob, std::string_view text, KnobScope scope) {
  const size_t i = IndexOf(knob);
  if (i >= Table().size()) return absl::InternalError("not a knob of the table");
  if (absl::Status st = ParseKnob(Table()[i], text, scope, &params_); !st.ok()) return st;
  given_ |= 1u << i;
  return absl::OkStatus();
}

bool KnobSettings::given(const Knob& knob) const {
  const size_t i = IndexOf(knob);
  return i < Table().size() && (given_ >> i & 1u) != 0;
}

bool KnobSettings::given(std::string_view name) const {
  const Knob* k = FindKnob(name);
  return k != nullptr && given(*k);
}

SpecParams KnobSettings::ApplyTo(SpecParams base) const {
  for (const Knob& k : Table()) {
    if (!given(k)) continue;
    switch (k.type) {
      case KnobType::kMode:
        base.*k.mode = params_.*k.mode;
        break;
      case KnobType::kCount:
        base.*k.count = params_.*k.count;
        break;
      case KnobType::kFraction:
        base.*k.fraction = params_.*k.fraction;
        break;
      case KnobType::kSwitch:
        base.*k.on = params_.*k.on;
        break;
    }
  }
  return base;
}

}  // namespace pipeinfer::spec
