// The knob table (spec/knobs.h) and its CLI11 flags (spec/knob_flags.h): every knob is well formed,
// text round-trips, ranges are enforced with one message, and the flags record what was given.
// The wire (SpecConfig) and the cluster YAML are tested against the same table in
// tests/unit/draft/spec_knob_entry_points_test.cc.
#include "spec/knobs.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "spec/knob_flags.h"

namespace pipeinfer::spec {
namespace {

// The parse error CLI11 reports for `args` on an app with every knob flag; empty when it parses.
std::string FlagError(const std::vector<std::string>& args, KnobScope scope,
                      KnobSettings* settings = nullptr) {
  KnobSettings local;
  CLI::App app;
  KnobFlagOptions o;
  o.scope = scope;
  AddKnobFlags(app, settings ? settings : &local, o);
  std::vector<std::string> argv = args;
  std::reverse(argv.begin(), argv.end());  // CLI11 parses a reversed vector
  try {
    app.parse(argv);
  } catch (const CLI::ParseError& e) {
    return e.what();
  }
  return "";
}

// A valid value different from the default, as text.
std::string OtherValue(const Knob& k) {
  switch (k.type) {
    case KnobType::kMode:
      return "sync";
    case KnobType::kCount:
      return std::to_string(static_cast<uint32_t>(k.max));
    case KnobType::kFraction:
      return "0.25";
    case KnobType::kSwitch:
      return "true";
  }
  return "";
}

TEST(Knobs, TableIsWellFormed) {
  std::set<std::string_view> names;
  const SpecParams defaults;
  for (const Knob& k : Knobs()) {
    SCOPED_TRACE(std::string(k.name));
    EXPECT_TRUE(names.insert(k.name).second) << "duplicate name";
    std::string flag = "--" + std::string(k.name);
    std::replace(flag.begin(), flag.end(), '_', '-');
    EXPECT_EQ(k.flag, flag);
    EXPECT_FALSE(k.help.empty());
    EXPECT_EQ(FindKnob(k.name), &k);
    // Exactly the accessor of its type.
    EXPECT_EQ(k.mode != nullptr, k.type == KnobType::kMode);
    EXPECT_EQ(k.count != nullptr, k.type == KnobType::kCount);
    EXPECT_EQ(k.fraction != nullptr, k.type == KnobType::kFraction);
    EXPECT_EQ(k.on != nullptr, k.type == KnobType::kSwitch);
    if (k.type == KnobType::kCount || k.type == KnobType::kFraction) {
      EXPECT_LT(k.min, k.max);
    }
    // The defaults are in range.
    SpecParams p;
    EXPECT_TRUE(ParseKnob(k, FormatKnob(k, defaults), KnobScope::kDefault, &p).ok());
  }
  EXPECT_EQ(FindKnob("no_such_knob"), nullptr);
  // SpecParams' knobs, all of them.
  EXPECT_EQ(names,
            (std::set<std::string_view>{"mode", "draft_max", "p_accept", "p_split", "p_recovery",
                                        "p_decay", "max_branches", "max_inflight", "no_cancel",
                                        "no_continuous", "paper_tree"}));
  EXPECT_TRUE(Validate(defaults).ok());
}

TEST(Knobs, TextRoundTrips) {
  for (const Knob& k : Knobs()) {
    SCOPED_TRACE(std::string(k.name));
    SpecParams p;
    ASSERT_TRUE(ParseKnob(k, OtherValue(k), KnobScope::kDefault, &p).ok());
    EXPECT_NE(FormatKnob(k, p), FormatKnob(k, SpecParams()));
    SpecParams q;
    ASSERT_TRUE(ParseKnob(k, FormatKnob(k, p), KnobScope::kDefault, &q).ok());
    EXPECT_EQ(FormatKnob(k, q), FormatKnob(k, p));
  }
  SpecParams p;
  p.p_accept = 0.1f;  // the shortest text that reads back, not 0.100000001
  EXPECT_EQ(FormatKnob(*FindKnob("p_accept"), p), "0.1");
}

TEST(Knobs, RangesHaveOneMessage) {
  const Knob& draft_max = *FindKnob("draft_max");
  // draft_max: 0 is "self-tuned" as a service default, not a request's value.
  EXPECT_TRUE(CheckKnob(draft_max, 0, KnobScope::kDefault).ok());
  EXPECT_EQ(CheckKnob(draft_max, 0, KnobScope::kRequest).message(),
            "draft_max must be in [1, 64], got 0");
  EXPECT_EQ(CheckKnob(draft_max, 65, KnobScope::kRequest).message(),
            "draft_max must be in [1, 64], got 65");
  EXPECT_EQ(CheckKnob(*FindKnob("p_accept"), 1.5).message(), "p_accept must be in [0, 1], got 1.5");
  EXPECT_EQ(CheckKnob(*FindKnob("p_split"), NAN).message(), "p_split must be in [0, 1], got nan");
  // max_inflight: 0 is "derived" as a service default, not a request's value.
  const Knob& inflight = *FindKnob("max_inflight");
  EXPECT_TRUE(CheckKnob(inflight, 0, KnobScope::kDefault).ok());
  EXPECT_EQ(CheckKnob(inflight, 0, KnobScope::kRequest).message(),
            "max_inflight must be in [1, 256], got 0");
  EXPECT_EQ(CheckKnob(inflight, 300, KnobScope::kDefault).message(),
            "max_inflight must be in [0, 256] (0 = derived: number of stages + 1), got 300");

  // Validate reports the table's message for a SpecParams out of range.
  SpecParams p;
  p.max_branches = 17;
  EXPECT_EQ(Validate(p).message(), CheckKnob(*FindKnob("max_branches"), 17).message());

  // Text that is not a value of the knob's type.
  SpecParams q;
  EXPECT_EQ(ParseKnob(draft_max, "4.5", KnobScope::kDefault, &q).message(),
            "draft_max must be a whole number, got '4.5'");
  EXPECT_EQ(ParseKnob(*FindKnob("p_decay"), "x", KnobScope::kDefault, &q).message(),
            "p_decay must be a number, got 'x'");
  EXPECT_EQ(ParseKnob(*FindKnob("no_cancel"), "maybe", KnobScope::kDefault, &q).message(),
            "no_cancel must be true or false, got 'maybe'");
  EXPECT_EQ(ParseKnob(*FindKnob("mode"), "fast", KnobScope::kDefault, &q).message(),
            "unknown speculation mode 'fast' (expected plain, sync or pipeinfer)");
}

TEST(KnobFlags, EveryKnobIsAFlagAndOnlyGivenOnesAreRecorded) {
  for (const Knob& k : Knobs()) {
    SCOPED_TRACE(std::string(k.name));
    KnobSettings s;
    std::vector<std::string> args = {std::string(k.flag)};
    if (k.type != KnobType::kSwitch) args.push_back(OtherValue(k));
    ASSERT_EQ(FlagError(args, KnobScope::kDefault, &s), "");
    for (const Knob& other : Knobs()) EXPECT_EQ(s.given(other), &other == &k) << other.name;
    EXPECT_EQ(FormatKnob(k, s.params()), OtherValue(k));
    // ApplyTo changes only the given knob of a base.
    SpecParams base;
    base.draft_max = 7;
    const SpecParams applied = s.ApplyTo(base);
    for (const Knob& other : Knobs()) {
      EXPECT_EQ(FormatKnob(other, applied), &other == &k ? OtherValue(k) : FormatKnob(other, base))
          << other.name;
    }
  }
  KnobSettings none;
  ASSERT_EQ(FlagError({}, KnobScope::kDefault, &none), "");
  for (const Knob& k : Knobs()) EXPECT_FALSE(none.given(k));
}

TEST(KnobFlags, RangesAreEnforcedWithTheTableMessage) {
  for (const Knob& k : Knobs()) {
    if (k.type != KnobType::kCount && k.type != KnobType::kFraction) continue;
    for (KnobScope scope : {KnobScope::kDefault, KnobScope::kRequest}) {
      for (double bad : {KnobMin(k, scope) - 1, k.max + 1}) {
        if (k.type == KnobType::kCount && bad < 0) continue;  // not a count at all
        SCOPED_TRACE(std::string(k.name) + " " + std::to_string(bad));
        std::string text = k.type == KnobType::kCount ? std::to_string(static_cast<int64_t>(bad))
                                                      : std::to_string(bad);
        SpecParams p;
        const absl::Status want = ParseKnob(k, text, scope, &p);
        ASSERT_FALSE(want.ok());
        EXPECT_NE(FlagError({std::string(k.flag), text}, scope).find(std::string(want.message())),
                  std::string::npos);
      }
    }
  }
  EXPECT_NE(FlagError({"--mode", "fast"}, KnobScope::kRequest)
                .find("unknown speculation mode 'fast' (expected plain, sync or pipeinfer)"),
            std::string::npos);
  EXPECT_EQ(FlagError({"--max-inflight", "0"}, KnobScope::kDefault), "");
  EXPECT_NE(FlagError({"--max-inflight", "0"}, KnobScope::kRequest)
                .find("max_inflight must be in [1, 256], got 0"),
            std::string::npos);
}

TEST(KnobFlags, SkippedKnobsAreNotOffered) {
  KnobSettings s;
  CLI::App app;
  KnobFlagOptions o;
  o.skip = {"mode", "no_cancel"};
  AddKnobFlags(app, &s, o);
  EXPECT_THROW(app.get_option("--mode"), CLI::OptionNotFound);
  EXPECT_THROW(app.get_option("--no-cancel"), CLI::OptionNotFound);
  EXPECT_NE(app.get_option("--p-split"), nullptr);
  EXPECT_NE(app.get_option("--max-branches"), nullptr);
}

}  // namespace
}  // namespace pipeinfer::spec
