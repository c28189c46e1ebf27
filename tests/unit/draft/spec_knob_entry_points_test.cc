// The knob table (spec/knobs.h) at every place a speculation knob enters: pipeinfer-draft's flags,
// `pipeinfer up`, `complete` and `bench` flags, the cluster YAML's `spec:` keys and what `up`
// passes on to pipeinfer-draft, and the wire's SpecConfig (draft_server/spec_proto.h). Every knob
// round-trips flag -> SpecParams -> SpecConfig -> SpecParams, and every range is enforced with the
// table's message everywhere.
#include <google/protobuf/descriptor.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/bench_commands.h"
#include "cli/client_commands.h"
#include "cli/cluster_commands.h"
#include "cluster/config.h"
#include "draft_server/spec_proto.h"
#include "spec/knob_flags.h"
#include "spec/knobs.h"

namespace pipeinfer {
namespace {

using google::protobuf::FieldDescriptor;
using spec::Knob;
using spec::KnobScope;
using spec::KnobType;

// Parses `args` (without the program name); returns CLI11's error text, empty on success.
std::string ParseError(CLI::App& app, std::vector<std::string> args) {
  std::reverse(args.begin(), args.end());  // CLI11 parses a reversed vector
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return e.what();
  }
  return "";
}

// pipeinfer-draft's knob flags (services/draft/main.cc registers them the same way).
std::string DraftServiceError(const std::vector<std::string>& args, spec::KnobSettings* s) {
  CLI::App app;
  spec::KnobFlagOptions o;
  o.show_defaults = true;
  spec::AddKnobFlags(app, s, o);
  return ParseError(app, args);
}

// The `pipeinfer` CLI's commands; only failing command lines are parsed (a successful one would
// run the command).
std::string CliError(std::vector<std::string> args) {
  CLI::App app;
  cli::RegisterClusterCommands(app);
  cli::RegisterClientCommands(app);
  cli::RegisterBenchCommands(app);
  return ParseError(app, std::move(args));
}

std::string Same(const spec::SpecParams& p) {
  std::string out;
  for (const Knob& k : spec::Knobs()) out += std::string(k.name) + "=" + FormatKnob(k, p) + " ";
  return out;
}

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

class TempYaml {
 public:
  TempYaml() {
    dir_ =
        std::filesystem::temp_directory_path() / ("spec_knobs_test." + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_ / "configs");
  }
  ~TempYaml() { std::filesystem::remove_all(dir_); }
  absl::StatusOr<cluster::ClusterConfig> Load(const std::string& spec_body) {
    const std::string path = (dir_ / "configs" / "c.yaml").string();
    std::ofstream(path) << "model: m.gguf\nspec:\n" << spec_body;
    return cluster::LoadClusterConfig(path);
  }

 private:
  std::filesystem::path dir_;
};

TEST(SpecKnobEntryPoints, SpecConfigFieldsAreTheKnobs) {
  const auto* d = v1::SpecConfig::descriptor();
  std::set<std::string> fields;
  for (int i = 0; i < d->field_count(); ++i) fields.insert(d->field(i)->name());
  std::set<std::string> knobs;
  for (const Knob& k : spec::Knobs()) {
    knobs.insert(std::string(k.name));
    const FieldDescriptor* f = d->FindFieldByName(std::string(k.name));
    ASSERT_NE(f, nullptr) << k.name;
    switch (k.type) {
      case KnobType::kMode:
        EXPECT_EQ(f->cpp_type(), FieldDescriptor::CPPTYPE_ENUM);
        break;
      case KnobType::kCount:
        EXPECT_EQ(f->cpp_type(), FieldDescriptor::CPPTYPE_UINT32) << k.name;
        EXPECT_TRUE(f->has_presence()) << k.name;
        break;
      case KnobType::kFraction:
        EXPECT_EQ(f->cpp_type(), FieldDescriptor::CPPTYPE_FLOAT) << k.name;
        EXPECT_TRUE(f->has_presence()) << k.name;
        break;
      case KnobType::kSwitch:
        EXPECT_EQ(f->cpp_type(), FieldDescriptor::CPPTYPE_BOOL) << k.name;
        EXPECT_TRUE(f->has_presence()) << k.name;
        break;
    }
  }
  EXPECT_EQ(fields, knobs);
}

TEST(SpecKnobEntryPoints, EveryKnobRoundTripsFlagParamsConfigParams) {
  for (const Knob& k : spec::Knobs()) {
    SCOPED_TRACE(std::string(k.name));
    // A client's flag (`complete`): the knob given, sent as the only SpecConfig field.
    spec::KnobSettings given;
    CLI::App app;
    spec::KnobFlagOptions o;
    o.scope = KnobScope::kRequest;
    spec::AddKnobFlags(app, &given, o);
    std::vector<std::string> args = {std::string(k.flag)};
    if (k.type != KnobType::kSwitch) args.push_back(OtherValue(k));
    ASSERT_EQ(ParseError(app, args), "");
    const v1::SpecConfig only = draft_server::ToSpecConfig(given);
    const FieldDescriptor* f = v1::SpecConfig::descriptor()->FindFieldByName(std::string(k.name));
    std::vector<const FieldDescriptor*> set;
    only.GetReflection()->ListFields(only, &set);
    ASSERT_EQ(set.size(), 1u);
    EXPECT_EQ(set[0], f);

    // The service resolves it over its defaults: the flag's value, the rest the defaults.
    spec::SpecParams defaults;
    defaults.draft_max = 9;
    absl::StatusOr<spec::SpecParams> got = draft_server::FromSpecConfig(only, defaults);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(Same(*got), Same(given.ApplyTo(defaults)));
    EXPECT_EQ(FormatKnob(k, *got), OtherValue(k));

    // A service's full SpecConfig (DraftInfo.defaults) reads back as the same SpecParams.
    const v1::SpecConfig full = draft_server::ToSpecConfig(*got);
    absl::StatusOr<spec::SpecParams> back = draft_server::FromSpecConfig(full, spec::SpecParams());
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(Same(*back), Same(*got));
  }
}

TEST(SpecKnobEntryPoints, ModeMapping) {
  for (spec::Mode m : {spec::Mode::kPlain, spec::Mode::kSync, spec::Mode::kPipeInfer}) {
    absl::StatusOr<spec::Mode> back = draft_server::ModeFromProto(draft_server::ToProto(m));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, m);
  }
  spec::SpecParams defaults;
  defaults.mode = spec::Mode::kSync;
  v1::SpecConfig c;  // UNSPECIFIED: the service default
  EXPECT_EQ(draft_server::FromSpecConfig(c, defaults)->mode, spec::Mode::kSync);
  c.set_mode(static_cast<v1::SpecMode>(7));
  EXPECT_EQ(draft_server::FromSpecConfig(c, defaults).status(),
            absl::InvalidArgumentError("unknown speculation mode 7"));
}

TEST(SpecKnobEntryPoints, EveryRangeIsEnforcedEverywhereWithTheSameMessage) {
  TempYaml yaml;
  for (const Knob& k : spec::Knobs()) {
    if (k.type != KnobType::kCount && k.type != KnobType::kFraction) continue;
    std::vector<double> bad = {k.max + 1};
    if (k.min > 0) bad.push_back(k.min - 1);
    if (k.type == KnobType::kFraction) bad.push_back(-0.5);
    for (double v : bad) {
      const std::string text =
          k.type == KnobType::kCount ? std::to_string(static_cast<int64_t>(v)) : std::to_string(v);
      SCOPED_TRACE(std::string(k.name) + " = " + text);
      const std::string service = std::string(spec::CheckKnob(k, v, KnobScope::kDefault).message());
      const std::string request = std::string(spec::CheckKnob(k, v, KnobScope::kRequest).message());
      ASSERT_FALSE(service.empty());
      ASSERT_FALSE(request.empty());
      const auto has = [](const std::string& where, const std::string& what) {
        return where.find(what) != std::string::npos;
      };
      const std::string flag(k.flag);

      spec::KnobSettings s;
      EXPECT_PRED2(has, DraftServiceError({flag, text}, &s), service);
      EXPECT_PRED2(has, CliError({"up", flag, text}), service);
      EXPECT_PRED2(has, CliError({"complete", "--router", "x", "-p", "hi", "-n", "4", flag, text}),
                   request);
      EXPECT_PRED2(has, CliError({"bench", "--router", "x", flag, text}), request);

      absl::StatusOr<cluster::ClusterConfig> loaded =
          yaml.Load("  " + std::string(k.name) + ": " + text + "\n");
      EXPECT_PRED2(has, std::string(loaded.status().message()), service);
      cluster::ClusterConfig c;
      c.model = "/dev/null";
      c.spec[std::string(k.name)] = text;
      EXPECT_PRED2(has, std::string(cluster::ValidateClusterConfig(c).message()), service);

      if (v >= 0) {  // a negative value cannot be put into an unsigned field
        v1::SpecConfig wire;
        const FieldDescriptor* f =
            v1::SpecConfig::descriptor()->FindFieldByName(std::string(k.name));
        if (k.type == KnobType::kCount) {
          wire.GetReflection()->SetUInt32(&wire, f, static_cast<uint32_t>(v));
        } else {
          wire.GetReflection()->SetFloat(&wire, f, static_cast<float>(v));
        }
        EXPECT_EQ(draft_server::FromSpecConfig(wire, spec::SpecParams()).status(),
                  absl::InvalidArgumentError(request));
      }
      spec::SpecParams p;
      if (k.type == KnobType::kCount && v >= 0) {
        p.*k.count = static_cast<uint32_t>(v);
        EXPECT_EQ(spec::Validate(p).message(), service);
      } else if (k.type == KnobType::kFraction) {
        p.*k.fraction = static_cast<float>(v);
        EXPECT_EQ(spec::Validate(p).message(), service);
      }
    }
  }
}

TEST(SpecKnobEntryPoints, ARequestNamesItsInFlightLimit) {
  // 0 = "derived from the number of stages" is a service default, never a request's value.
  const std::string want = "max_inflight must be in [1, 256], got 0";
  EXPECT_NE(CliError({"complete", "--router", "x", "-p", "hi", "-n", "4", "--max-inflight", "0"})
                .find(want),
            std::string::npos);
  EXPECT_NE(CliError({"bench", "--router", "x", "--max-inflight", "0"}).find(want),
            std::string::npos);
  v1::SpecConfig wire;
  wire.set_max_inflight(0);
  EXPECT_EQ(draft_server::FromSpecConfig(wire, spec::SpecParams()).status(),
            absl::InvalidArgumentError(want));
  spec::KnobSettings s;
  EXPECT_EQ(DraftServiceError({"--max-inflight", "0"}, &s), "");
}

TEST(SpecKnobEntryPoints, BenchOffersEveryKnobButTheRowSettings) {
  for (const Knob& k : spec::Knobs()) {
    const bool row = k.name == "mode" || k.type == KnobType::kSwitch;
    // A knob bench offers complains about its missing value, one it does not offer is an extra
    // argument.
    const std::string err = CliError({"bench", "--router", "x", std::string(k.flag)});
    ASSERT_FALSE(err.empty()) << k.name;
    EXPECT_EQ(err.find("was not expected") != std::string::npos, row) << k.name << ": " << err;
  }
}

TEST(SpecKnobEntryPoints, YamlChecksSpecKeysAgainstTheTable) {
  TempYaml yaml;
  auto typo = yaml.Load("  p_acept: 0.2\n");
  EXPECT_NE(typo.status().message().find("unknown spec key 'p_acept'"), std::string::npos);
  auto mode = yaml.Load("  mode: sync\n");
  EXPECT_NE(mode.status().message().find("unknown spec key 'mode'"), std::string::npos);
  auto bad_switch = yaml.Load("  no_cancel: maybe\n");
  EXPECT_NE(bad_switch.status().message().find("no_cancel must be true or false, got 'maybe'"),
            std::string::npos);

  auto ok = yaml.Load(
      "  draft_max: 6\n  p_accept: 0.50\n  no_cancel: yes\n  no_continuous: false\n"
      "  draft_threads: 2\n");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->spec, (std::map<std::string, std::string>{{"draft_max", "6"},
                                                          {"p_accept", "0.5"},
                                                          {"no_cancel", "true"},
                                                          {"no_continuous", "false"},
                                                          {"draft_threads", "2"}}));
  cluster::ClusterConfig c;
  c.spec["p_acept"] = "0.2";
  EXPECT_NE(cluster::ValidateClusterConfig(c).message().find("unknown spec key 'p_acept'"),
            std::string::npos);
}

TEST(SpecKnobEntryPoints, UpPassesTheGivenKnobsToTheDraftService) {
  cluster::ClusterConfig c;
  c.spec = {{"draft_max", "6"},     {"p_split", "0.05"},        {"max_branches", "3"},
            {"no_cancel", "true"},  {"no_continuous", "false"}, {"max_inflight", "0"},
            {"draft_threads", "2"}, {"draft_noise", "0.2"}};
  const std::vector<std::string> argv = cluster::DraftArgs(c);
  EXPECT_EQ(argv,
            (std::vector<std::string>{"--draft-max", "6", "--p-split", "0.05", "--max-branches",
                                      "3", "--max-inflight", "0", "--no-cancel", "--draft-threads",
                                      "2", "--draft-noise", "0.2"}));
  // pipeinfer-draft reads the knobs back (the draft options are its own flags).
  const std::vector<std::string> knob_args(argv.begin(), argv.end() - 4);
  spec::KnobSettings s;
  ASSERT_EQ(DraftServiceError(knob_args, &s), "");
  spec::SpecParams want;
  want.draft_max = 6;
  want.p_split = 0.05f;
  want.max_branches = 3;
  want.no_cancel = true;
  EXPECT_EQ(Same(s.params()), Same(want));
  for (const char* name : {"draft_max", "p_split", "max_branches", "no_cancel", "max_inflight"}) {
    EXPECT_TRUE(s.given(name)) << name;
  }
  EXPECT_FALSE(s.given("no_continuous"));  // off is the default: not passed
  EXPECT_FALSE(s.given("p_accept"));
}

// The benchmark-only draft options (emulated draft cost, oracle rank model) flow from the YAML's
// `spec:` mapping to pipeinfer-draft's flags.
TEST(SpecKnobEntryPoints, DraftEmulationOptionsReachTheDraftService) {
  TempYaml yaml;
  auto ok = yaml.Load("  emulate_draft_us: 1500\n  draft_rank_model: uniform\n");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(cluster::DraftArgs(*ok), (std::vector<std::string>{"--draft-rank-model", "uniform",
                                                               "--emulate-draft-us", "1500"}));
}

}  // namespace
}  // namespace pipeinfer
