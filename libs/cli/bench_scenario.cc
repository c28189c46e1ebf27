#include "cli/bench_scenario.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace pipeinfer::cli {

namespace fs = std::filesystem;

std::string ScenarioRow::ClusterKey() const {
  return absl::StrCat(stages, "/", run_us, "/", token_us, "/", draft_us, "/", DraftNoise(), "/",
                      link_mbps, "/", link_us);
}

std::string ScenarioRow::DraftNoise() const {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4g", std::max(0.0, 1.0 - agreement));
  return buf;
}

namespace {

// A YAML node with the path it was found at, for error messages.
struct Node {
  YAML::Node node;
  std::string path;

  Node Child(const std::string& key) const {
    return {node[key], path.empty() ? key : path + "." + key};
  }
  Node At(size_t i) const { return {node[i], absl::StrCat(path, "[", i, "]")}; }
};

class Parser {
 public:
  explicit Parser(std::string file) : file_(std::move(file)) {}

  absl::Status Error(const Node& n, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(file_, ": ", n.path, ": ", what));
  }

  // Every key of the mapping `n` must be in `allowed`.
  absl::Status Keys(const Node& n, const std::set<std::string>& allowed) const {
    if (!n.node.IsMap()) return Error(n, "must be a mapping");
    for (const auto& kv : n.node) {
      const std::string key = kv.first.as<std::string>();
      if (!allowed.count(key)) {
        return Error(
            n, absl::StrCat("unknown key '", key, "' (known: ", absl::StrJoin(allowed, ", "), ")"));
      }
    }
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status Get(const Node& n, T* out) const {
    try {
      if (!n.node.IsScalar()) return Error(n, "must be a scalar");
      *out = n.node.as<T>();
    } catch (const YAML::Exception&) {
      return Error(n, absl::StrCat("bad value '", n.node.Scalar(), "'"));
    }
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status Range(const Node& n, T* out, double lo, double hi) const {
    if (absl::Status s = Get(n, out); !s.ok()) return s;
    if (!(static_cast<double>(*out) >= lo && static_cast<double>(*out) <= hi)) {
      return Error(n, absl::StrCat("must be in [", lo, ", ", hi, "], got ", n.node.Scalar()));
    }
    return absl::OkStatus();
  }

  // Calls `each` for every item of the sequence `n` (at least one).
  absl::Status List(const Node& n, const std::function<absl::Status(const Node&)>& each) const {
    if (!n.node.IsSequence() || n.node.size() == 0) return Error(n, "must be a non-empty list");
    for (size_t i = 0; i < n.node.size(); ++i) {
      if (absl::Status s = each(n.At(i)); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  std::string file_;
};

// Sets the named axis of `row` from a YAML value (a scalar, or a mapping for stage_cost/link).
absl::Status SetAxis(const Parser& p, const std::string& axis, const Node& v, ScenarioRow* row) {
  if (axis == "agreement") return p.Range(v, &row->agreement, 0, 1);
  if (axis == "stages") return p.Range(v, &row->stages, 1, 64);
  if (axis == "draft_us") return p.Range(v, &row->draft_us, 0, 1e7);
  if (axis == "concurrency") return p.Range(v, &row->concurrency, 1, 1024);
  if (axis == "stage_cost") {
    if (absl::Status s = p.Keys(v, {"run_us", "token_us"}); !s.ok()) return s;
    if (v.node["run_us"]) {
      if (absl::Status s = p.Range(v.Child("run_us"), &row->run_us, 0, 1e7); !s.ok()) return s;
    }
    if (v.node["token_us"]) {
      if (absl::Status s = p.Range(v.Child("token_us"), &row->token_us, 0, 1e7); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (axis == "link") {
    if (absl::Status s = p.Keys(v, {"mbps", "us"}); !s.ok()) return s;
    if (v.node["mbps"]) {
      if (absl::Status s = p.Range(v.Child("mbps"), &row->link_mbps, 0, 1e6); !s.ok()) return s;
    }
    if (v.node["us"]) {
      if (absl::Status s = p.Range(v.Child("us"), &row->link_us, 0, 1e7); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  return p.Error(v, "unknown axis '" + axis + "'");
}

const std::vector<std::string>& AxisNames() {
  static const std::vector<std::string> kAxes = {"agreement", "stages", "stage_cost",
                                                 "draft_us",  "link",   "concurrency"};
  return kAxes;
}

std::set<std::string> AxisSet() { return {AxisNames().begin(), AxisNames().end()}; }

// A row given field by field over `base` (an explicit `rows:` entry, or `base:` itself).
absl::Status ParseRow(const Parser& p, const Node& n, bool allow_label, ScenarioRow* row) {
  std::set<std::string> keys = AxisSet();
  if (allow_label) keys.insert("label");
  if (absl::Status s = p.Keys(n, keys); !s.ok()) return s;
  for (const auto& kv : n.node) {
    const std::string key = kv.first.as<std::string>();
    if (key == "label") {
      if (absl::Status s = p.Get(n.Child(key), &row->label); !s.ok()) return s;
      continue;
    }
    if (absl::Status s = SetAxis(p, key, n.Child(key), row); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// The cross product of `axes:` over `base`, the first axis varying slowest.
absl::Status ParseAxes(const Parser& p, const Node& n, const ScenarioRow& base,
                       std::vector<ScenarioRow>* out) {
  if (absl::Status s = p.Keys(n, AxisSet()); !s.ok()) return s;
  std::vector<ScenarioRow> rows = {base};
  for (const std::string& axis : AxisNames()) {
    if (!n.node[axis]) continue;
    std::vector<ScenarioRow> next;
    absl::Status st = p.List(n.Child(axis), [&](const Node& v) {
      for (const ScenarioRow& r : rows) {
        ScenarioRow x = r;
        if (absl::Status s = SetAxis(p, axis, v, &x); !s.ok()) return s;
        next.push_back(x);
      }
      return absl::OkStatus();
    });
    if (!st.ok()) return st;
    // Keep the first axis slowest: order by the previous rows, then this axis.
    std::vector<ScenarioRow> ordered;
    const size_t nv = next.size() / rows.size();
    for (size_t r = 0; r < rows.size(); ++r) {
      for (size_t v = 0; v < nv; ++v) ordered.push_back(next[v * rows.size() + r]);
    }
    rows = std::move(ordered);
  }
  out->insert(out->end(), rows.begin(), rows.end());
  return absl::OkStatus();
}

// `axes:` or `rows:` of the top level or of a group (exactly one of them, or neither: the base).
absl::Status ParseRowSource(const Parser& p, const Node& n, const ScenarioRow& base,
                            std::vector<ScenarioRow>* out) {
  const bool axes = static_cast<bool>(n.node["axes"]);
  const bool rows = static_cast<bool>(n.node["rows"]);
  if (axes && rows) return p.Error(n, "give either 'axes' or 'rows', not both");
  if (axes) return ParseAxes(p, n.Child("axes"), base, out);
  if (rows) {
    return p.List(n.Child("rows"), [&](const Node& v) {
      ScenarioRow r = base;
      if (absl::Status s = ParseRow(p, v, /*allow_label=*/true, &r); !s.ok()) return s;
      out->push_back(r);
      return absl::OkStatus();
    });
  }
  out->push_back(base);
  return absl::OkStatus();
}

absl::Status ParseCluster(const Parser& p, const Node& n, const fs::path& root,
                          ScenarioCluster* c) {
  if (absl::Status s = p.Keys(n, {"model", "draft_model", "threads", "max_batch_tokens",
                                  "kv_tokens", "kv_memory", "draft_threads", "health_timeout_s"});
      !s.ok()) {
    return s;
  }
  const auto resolve = [&](const std::string& f) {
    if (f.empty() || fs::path(f).is_absolute()) return f;
    return (root / f).lexically_normal().string();
  };
  absl::Status st;
  if (n.node["model"] && (st = p.Get(n.Child("model"), &c->model)).ok())
    c->model = resolve(c->model);
  if (st.ok() && n.node["draft_model"] &&
      (st = p.Get(n.Child("draft_model"), &c->draft_model)).ok())
    c->draft_model = resolve(c->draft_model);
  if (st.ok() && n.node["threads"]) st = p.Range(n.Child("threads"), &c->threads, 1, 256);
  if (st.ok() && n.node["max_batch_tokens"])
    st = p.Range(n.Child("max_batch_tokens"), &c->max_batch_tokens, 0, 1 << 20);
  if (st.ok() && n.node["kv_tokens"]) st = p.Range(n.Child("kv_tokens"), &c->kv_tokens, 0, 1e9);
  if (st.ok() && n.node["kv_memory"]) st = p.Range(n.Child("kv_memory"), &c->kv_memory, 0, 1e15);
  if (st.ok() && n.node["draft_threads"])
    st = p.Range(n.Child("draft_threads"), &c->draft_threads, 0, 256);
  if (st.ok() && n.node["health_timeout_s"])
    st = p.Range(n.Child("health_timeout_s"), &c->health_timeout_s, 1, 3600);
  return st;
}

absl::Status ParseSynth(const Parser& p, const Node& n, std::map<std::string, std::string>* out) {
  if (absl::Status s = p.Keys(n, {"n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "n_vocab",
                                  "n_ctx", "type", "seed"});
      !s.ok()) {
    return s;
  }
  for (const auto& kv : n.node) {
    const std::string key = kv.first.as<std::string>();
    std::string v;
    if (absl::Status s = p.Get(n.Child(key), &v); !s.ok()) return s;
    (*out)[key] = v;
  }
  return absl::OkStatus();
}

absl::Status ParseBench(const Parser& p, const Node& n, ScenarioBench* b) {
  if (absl::Status s = p.Keys(
          n, {"prompts", "max_tokens", "repeat", "warmup", "modes", "knobs", "requests_per_level"});
      !s.ok()) {
    return s;
  }
  absl::Status st;
  if (n.node["prompts"]) {
    const Node pr = n.Child("prompts");
    if (pr.node.IsSequence()) {
      st = p.List(pr, [&](const Node& v) {
        std::string s;
        if (absl::Status e = p.Get(v, &s); !e.ok()) return e;
        b->prompts.push_back(s);
        return absl::OkStatus();
      });
    } else {
      st = p.Range(pr, &b->n_prompts, 1, 6);  // the built-in prompts
    }
  }
  if (st.ok() && n.node["max_tokens"])
    st = p.Range(n.Child("max_tokens"), &b->max_tokens, 1, 1 << 20);
  if (st.ok() && n.node["repeat"]) st = p.Range(n.Child("repeat"), &b->repeat, 1, 1000);
  if (st.ok() && n.node["warmup"]) st = p.Range(n.Child("warmup"), &b->warmup, 0, 100);
  if (st.ok() && n.node["requests_per_level"])
    st = p.Range(n.Child("requests_per_level"), &b->requests_per_level, 0, 1000000);
  if (st.ok() && n.node["modes"]) {
    static const std::set<std::string> kModes = {"plain",
                                                 "sync",
                                                 "pipeinfer",
                                                 "pipeinfer --no-cancel",
                                                 "pipeinfer --no-continuous",
                                                 "sync --paper-tree",
                                                 "pipeinfer --paper-tree"};
    b->modes.clear();
    st = p.List(n.Child("modes"), [&](const Node& v) {
      std::string m;
      if (absl::Status e = p.Get(v, &m); !e.ok()) return e;
      if (!kModes.count(m)) {
        return p.Error(v, "unknown mode '" + m + "' (known: " + absl::StrJoin(kModes, ", ") + ")");
      }
      if (std::find(b->modes.begin(), b->modes.end(), m) != b->modes.end()) {
        return p.Error(v, "mode '" + m + "' given twice");
      }
      b->modes.push_back(m);
      return absl::OkStatus();
    });
  }
  if (st.ok() && n.node["knobs"]) {
    const Node k = n.Child("knobs");
    if (!k.node.IsMap()) return p.Error(k, "must be a mapping");
    for (const auto& kv : k.node) {
      const std::string key = kv.first.as<std::string>();
      const spec::Knob* knob = spec::FindKnob(key);
      if (!knob || knob->type == spec::KnobType::kMode || knob->type == spec::KnobType::kSwitch) {
        return p.Error(k, "unknown knob '" + key +
                              "' (the speculation knobs of spec/knobs.h except the mode and the "
                              "ablation switches, which `modes` sets)");
      }
      std::string v;
      if (absl::Status e = p.Get(k.Child(key), &v); !e.ok()) return e;
      if (absl::Status e = b->knobs.Set(*knob, v, spec::KnobScope::kRequest); !e.ok()) {
        return p.Error(k.Child(key), std::string(e.message()));
      }
    }
  }
  return st;
}

// Rows of one cluster run together, clusters in the order of their first row.
void GroupByCluster(std::vector<ScenarioRow>* rows) {
  std::vector<std::string> order;
  for (const ScenarioRow& r : *rows) {
    if (std::find(order.begin(), order.end(), r.ClusterKey()) == order.end())
      order.push_back(r.ClusterKey());
  }
  std::stable_sort(rows->begin(), rows->end(), [&](const ScenarioRow& a, const ScenarioRow& b) {
    return std::find(order.begin(), order.end(), a.ClusterKey()) <
           std::find(order.begin(), order.end(), b.ClusterKey());
  });
  for (size_t i = 0; i < rows->size(); ++i) (*rows)[i].id = static_cast<int>(i) + 1;
}

}  // namespace

absl::StatusOr<Scenario> LoadScenario(const std::string& path, const std::string& only) {
  Scenario sc;
  sc.path = path;
  {
    std::ifstream f(path, std::ios::binary);
    if (!f) return absl::NotFoundError("cannot read scenario file " + path);
    sc.text.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  YAML::Node root;
  try {
    root = YAML::Load(sc.text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  const Parser p(path);
  const Node top{root, ""};
  if (!root.IsMap()) return absl::InvalidArgumentError(path + ": not a YAML mapping");
  // Relative model paths: against the repository root (the scenario folder's grandparent).
  const fs::path repo = fs::absolute(fs::path(path)).parent_path().parent_path().parent_path();
  try {
    static const std::set<std::string> kTop = {"name",  "description", "cluster", "synth", "base",
                                               "bench", "axes",        "rows",    "groups"};
    for (const auto& kv : root) {
      const std::string key = kv.first.as<std::string>();
      if (!kTop.count(key)) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": unknown key '", key, "' (known: ", absl::StrJoin(kTop, ", "), ")"));
      }
    }
    absl::Status st;
    if (root["name"]) st = p.Get(top.Child("name"), &sc.name);
    if (st.ok() && root["description"]) st = p.Get(top.Child("description"), &sc.description);
    if (st.ok() && root["cluster"]) st = ParseCluster(p, top.Child("cluster"), repo, &sc.cluster);
    if (st.ok() && root["synth"]) {
      sc.synth.emplace();
      st = ParseSynth(p, top.Child("synth"), &*sc.synth);
    }
    if (st.ok() && root["bench"]) st = ParseBench(p, top.Child("bench"), &sc.bench);
    if (st.ok() && root["base"]) st = ParseRow(p, top.Child("base"), false, &sc.base);
    if (!st.ok()) return st;
    if (sc.name.empty()) sc.name = fs::path(path).stem().string();

    if (root["groups"]) {
      if (root["axes"] || root["rows"]) {
        return p.Error(top.Child("groups"), "give 'groups' or top-level 'axes'/'rows', not both");
      }
      st = p.List(top.Child("groups"), [&](const Node& g) {
        if (absl::Status s = p.Keys(g, {"name", "axes", "rows"}); !s.ok()) return s;
        std::string name;
        if (!g.node["name"]) return p.Error(g, "a group needs a 'name'");
        if (absl::Status s = p.Get(g.Child("name"), &name); !s.ok()) return s;
        if (std::find(sc.groups.begin(), sc.groups.end(), name) != sc.groups.end()) {
          return p.Error(g, "group '" + name + "' given twice");
        }
        sc.groups.push_back(name);
        std::vector<ScenarioRow> rows;
        if (absl::Status s = ParseRowSource(p, g, sc.base, &rows); !s.ok()) return s;
        if (!only.empty() && name != only) return absl::OkStatus();
        for (ScenarioRow& r : rows) r.group = name;
        sc.rows.insert(sc.rows.end(), rows.begin(), rows.end());
        return absl::OkStatus();
      });
      if (!st.ok()) return st;
      if (!only.empty() && sc.rows.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": no group named '", only, "' (groups: ", absl::StrJoin(sc.groups, ", "), ")"));
      }
    } else {
      if (!only.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": --only ", only, " given but the scenario has no 'groups'"));
      }
      if (absl::Status s = ParseRowSource(p, top, sc.base, &sc.rows); !s.ok()) return s;
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }

  if (sc.synth && (!sc.cluster.model.empty() || !sc.cluster.draft_model.empty())) {
    return absl::InvalidArgumentError(
        path + ": 'synth' makes the model and the draft model; drop cluster.model/draft_model");
  }
  if (!sc.synth) {
    if (sc.cluster.model.empty())
      return absl::InvalidArgumentError(path + ": cluster.model missing");
    for (const std::string* f : {&sc.cluster.model, &sc.cluster.draft_model}) {
      std::error_code ec;
      if (!f->empty() && !fs::is_regular_file(*f, ec))
        return absl::NotFoundError(path + ": model file not found: " + *f);
    }
    const bool spec = std::any_of(sc.bench.modes.begin(), sc.bench.modes.end(),
                                  [](const std::string& m) { return m != "plain"; });
    if (spec && sc.cluster.draft_model.empty()) {
      return absl::InvalidArgumentError(path + ": modes other than plain need cluster.draft_model");
    }
  }
  GroupByCluster(&sc.rows);
  return sc;
}

std::vector<std::string> VariedAxes(const std::vector<ScenarioRow>& rows) {
  const auto varies = [&](auto field) {
    std::set<std::string> seen;
    for (const ScenarioRow& r : rows) seen.insert(field(r));
    return seen.size() > 1;
  };
  std::vector<std::string> out;
  if (varies([](const ScenarioRow& r) { return absl::StrCat(r.agreement); }))
    out.push_back("agreement");
  if (varies([](const ScenarioRow& r) { return absl::StrCat(r.stages); })) out.push_back("stages");
  if (varies([](const ScenarioRow& r) { return absl::StrCat(r.run_us, "/", r.token_us); }))
    out.push_back("stage_cost");
  if (varies([](const ScenarioRow& r) { return absl::StrCat(r.draft_us); }))
    out.push_back("draft_us");
  if (varies([](const ScenarioRow& r) { return absl::StrCat(r.link_mbps, "/", r.link_us); }))
    out.push_back("link");
  if (varies([](const ScenarioRow& r) { return absl::StrCat(r.concurrency); }))
    out.push_back("concurrency");
  return out;
}

}  // namespace pipeinfer::cli
