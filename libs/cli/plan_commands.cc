#include "cli/plan_commands.h"

#include <cmath>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "plan/model_costs.h"
#include "plan/planner.h"

namespace pipeinfer::cli {
namespace {

struct PlanArgs {
  plan::PlanInput in;
  // Alternatives to --stage-us/--token-us and --draft-us: sizes and the node's bandwidth.
  std::optional<double> model_gb, params_b, draft_gb, draft_params_b, node_gbps, node_mem_gb;
  std::string quant = "q8_0";
  double token_fraction = 0.05;
  std::optional<int> n_embd;
  std::string wire_dtype = "f16";
};

int Fail(const std::string& msg) {
  std::cerr << "error: " << msg << "\n";
  return 1;
}

// Weights in GB from --*-gb or --*-params-b with --quant.
absl::StatusOr<std::optional<double>> WeightsGb(const std::optional<double>& gb,
                                                const std::optional<double>& params_b,
                                                const std::string& quant, const char* what) {
  if (gb && params_b) {
    return absl::InvalidArgumentError(
        absl::StrCat("give --", what, "-gb or --", what, "-params-b, not both"));
  }
  if (gb) return gb;
  if (!params_b) return std::optional<double>();
  absl::StatusOr<double> bits = plan::BitsPerWeight(quant);
  if (!bits.ok()) return bits.status();
  return std::optional<double>(*params_b * *bits / 8.0);
}

absl::Status FillSizes(PlanArgs& a, bool stage_us_given, bool token_us_given, bool draft_us_given) {
  absl::StatusOr<std::optional<double>> target =
      WeightsGb(a.model_gb, a.params_b, a.quant, "model");
  if (!target.ok()) return target.status();
  absl::StatusOr<std::optional<double>> draft =
      WeightsGb(a.draft_gb, a.draft_params_b, a.quant, "draft");
  if (!draft.ok()) return draft.status();
  if ((target->has_value() || draft->has_value()) && !a.node_gbps) {
    return absl::InvalidArgumentError("--node-gbps is needed to turn model sizes into times");
  }
  if (target->has_value()) {
    if (stage_us_given || token_us_given) {
      return absl::InvalidArgumentError(
          "give either --stage-us/--token-us or a model size (--model-gb, --params-b)");
    }
    plan::ModelSize m;
    m.model_gb = **target;
    m.node_gbps = *a.node_gbps;
    m.token_fraction = a.token_fraction;
    m.stages = a.in.stages;
    absl::StatusOr<plan::StageCosts> c = plan::CostsFromModelSize(m);
    if (!c.ok()) return c.status();
    a.in.stage_us = c->stage_us;
    a.in.token_us = c->token_us;
    if (a.node_mem_gb) {
      if (!(*a.node_mem_gb > 0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("node_mem_gb must be > 0, got ", *a.node_mem_gb));
      }
      a.in.min_stages = std::max(1, static_cast<int>(std::ceil(**target / *a.node_mem_gb)));
    }
  }
  if (draft->has_value()) {
    if (draft_us_given) {
      return absl::InvalidArgumentError(
          "give either --draft-us or a draft size (--draft-gb, --draft-params-b)");
    }
    a.in.draft_us = **draft / *a.node_gbps * 1e6;
  }
  if (a.n_embd) {
    absl::StatusOr<double> per_value = plan::WireBytesPerValue(a.wire_dtype);
    if (!per_value.ok()) return per_value.status();
    if (*a.n_embd <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("n_embd must be > 0, got ", *a.n_embd));
    }
    a.in.hidden_bytes = static_cast<int>(std::ceil(*a.n_embd * *per_value));
  }
  return absl::OkStatus();
}

int RunPlan(PlanArgs a, bool stage_us_given, bool token_us_given, bool draft_us_given) {
  if (absl::Status s = FillSizes(a, stage_us_given, token_us_given, draft_us_given); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  absl::StatusOr<plan::PlanOutput> out = plan::Predict(a.in);
  if (!out.ok()) return Fail(std::string(out.status().message()));
  std::string text;
  for (const plan::ModePrediction& m : out->modes) {
    text += absl::StrFormat("%s %.1f\n", m.mode, m.tokens_per_s);
  }
  text += out->recommend.why + "\n";
  std::cout << text << std::flush;
  return std::cout ? 0 : Fail("cannot write to stdout");
}

}  // namespace

void RegisterPlanCommands(CLI::App& app) {
  auto args = std::make_shared<PlanArgs>();
  plan::PlanInput& in = args->in;
  CLI::App* cmd = app.add_subcommand(
      "plan",
      "Predict tokens/s of plain, sync and pipeinfer decoding on a pipeline and recommend "
      "speculation knobs (the model: docs/planner.md)");
  cmd->add_option("--stages", in.stages, "Pipeline stages")->capture_default_str();
  CLI::Option* stage_us =
      cmd->add_option("--stage-us", in.stage_us, "Fixed cost of one stage pass, microseconds")
          ->capture_default_str();
  CLI::Option* token_us =
      cmd->add_option("--token-us", in.token_us, "Added cost per token in a stage pass, us")
          ->capture_default_str();
  CLI::Option* draft_us =
      cmd->add_option("--draft-us", in.draft_us, "Cost of one draft forward pass per token, us")
          ->capture_default_str();
  cmd->add_option("--agreement", in.agreement,
                  "Probability that the draft's top token is the target's, in [0, 1]")
      ->capture_default_str();
  cmd->add_option("--draft-max", in.draft_max, "Most draft tokens per micro-batch")
      ->capture_default_str();
  cmd->add_option("--link-mbps", in.link_mbps, "Link rate between processes, Mbit/s (0 = infinite)")
      ->capture_default_str();
  cmd->add_option("--link-us", in.link_us, "One-way latency per link, microseconds")
      ->capture_default_str();
  CLI::Option* hidden =
      cmd->add_option("--hidden-bytes", in.hidden_bytes, "Bytes per token between stages")
          ->capture_default_str();
  CLI::Option* n_embd = cmd->add_option("--n-embd", args->n_embd,
                                        "Hidden size: bytes per token = n_embd x --wire-dtype");
  n_embd->excludes(hidden);
  cmd->add_option("--wire-dtype", args->wire_dtype,
                  "Hidden state type on the wire: f32, f16, "
                  "bf16, q8_0")
      ->capture_default_str();
  cmd->add_option("--concurrency", in.concurrency, "Requests generating at once")
      ->capture_default_str();
  cmd->add_option("--max-tokens", in.max_tokens, "Completion tokens per request")
      ->capture_default_str();
  cmd->add_option("--prompt-tokens", in.prompt_tokens, "Prompt tokens per request")
      ->capture_default_str();
  cmd->add_option("--max-inflight", in.max_inflight,
                  "pipeinfer runs in flight per request (0 = stages + 1)")
      ->capture_default_str();
  cmd->add_option("--hop-us", in.hop_us,
                  "Calibration: fixed cost of one message hop (gRPC, wake-up), us")
      ->capture_default_str();
  cmd->add_option("--draft-floor-us", in.draft_floor_us,
                  "Calibration: least a drafted token costs in the draft service, us")
      ->capture_default_str();
  cmd->add_option("--model-gb", args->model_gb, "Target weights, GB (instead of --stage-us)");
  cmd->add_option("--params-b", args->params_b, "Target parameters, billions (with --quant)");
  cmd->add_option("--quant", args->quant,
                  "Weight type for --params-b/--draft-params-b: f32, f16, "
                  "bf16, q8_0, q6_k, q5_k, q4_k, q4_0")
      ->capture_default_str();
  cmd->add_option("--draft-gb", args->draft_gb, "Draft weights, GB (instead of --draft-us)");
  cmd->add_option("--draft-params-b", args->draft_params_b, "Draft parameters, billions");
  cmd->add_option("--node-gbps", args->node_gbps, "A node's memory bandwidth, GB/s");
  cmd->add_option("--node-mem-gb", args->node_mem_gb,
                  "A node's memory for weights, GB (the fewest stages the model fits in)");
  cmd->add_option("--token-fraction", args->token_fraction,
                  "With a model size: token cost as a fraction of the stage pass cost")
      ->capture_default_str();
  cmd->final_callback([args, stage_us, token_us, draft_us] {
    const int rc =
        RunPlan(*args, stage_us->count() > 0, token_us->count() > 0, draft_us->count() > 0);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace pipeinfer::cli
