#include "cli/bench_commands.h"

#include <grpcpp/grpcpp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "pipeinfer/v1/draft.grpc.pb.h"
#include "pipeinfer/v1/router.grpc.pb.h"

namespace pipeinfer::cli {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

// Opening lines of Jane Austen's novels (public domain), the demo models' training domain.
const std::vector<std::string> kBuiltinPrompts = {
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition,",
    "The family of Dashwood had long been settled in Sussex.",
    "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who,",
    "No one who had ever seen Catherine Morland in her infancy would have supposed",
    "About thirty years ago Miss Maria Ward, of Huntingdon, with only seven thousand pounds,",
};

struct BenchArgs {
  std::string router;
  std::string draft;  // optional: Draft.GetInfo for the header (stages, draft model, defaults)
  std::string prompts_file;
  int max_tokens = 64;
  std::vector<std::string> modes = {"plain", "sync", "pipeinfer"};
  int repeat = 1;
  int warmup = 1;
  double temperature = 0.0;
  std::optional<uint64_t> seed;
  std::optional<uint32_t> draft_max, max_inflight;
  std::optional<float> p_accept, p_recovery, p_decay;
  bool ablations = false;
  bool stats = false;
  bool stop_at_eos = false;
  std::string out;
  std::string json_out;
};

// One row of the table: a mode with its ablation switches.
struct Variant {
  std::string label;
  v1::SpecMode mode = v1::SPEC_MODE_UNSPECIFIED;
  bool no_cancel = false;
  bool no_continuous = false;
};

struct RequestResult {
  size_t variant = 0;
  size_t prompt = 0;
  int repeat = 0;
  std::vector<uint32_t> ids;
  double wall_s = 0;                          // client: call start to end of stream
  double ttft_s = NAN;                        // client: call start to the first delta with tokens
  std::vector<double> itl_s;                  // client: one sample per token after the first delta
  uint64_t completion_tokens = 0;             // Usage.completion_tokens (else the ids received)
  v1::SpecCounters spec;                      // Finished.spec
  v1::Timings timings;                        // Finished.timings (router-measured)
  std::map<std::string, double> stats_delta;  // --stats: pipeline counter deltas over the request
};

int Fail(const std::string& msg) {
  std::cerr << "error: " << msg << "\n";
  return 1;
}

std::shared_ptr<grpc::Channel> BenchChannel(const std::string& addr) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
}

v1::SpecMode ModeFromName(const std::string& m) {
  if (m == "plain") return v1::SPEC_MODE_PLAIN;
  if (m == "sync") return v1::SPEC_MODE_SYNC;
  if (m == "pipeinfer") return v1::SPEC_MODE_PIPEINFER;
  return v1::SPEC_MODE_UNSPECIFIED;
}

// Linear interpolation between closest ranks; NAN for no samples.
double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const double pos = p * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

std::string Fmt(const char* fmt, double v) {
  if (!std::isfinite(v)) return "—";
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

std::string ShellQuote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789-_=./:,@+%") == std::string::npos) {
    return s;
  }
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// The command line as run (from /proc/self/cmdline), program name without its directory.
std::string CommandLine() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  std::string cur;
  for (char c : all) {
    if (c == '\0') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) args.push_back(cur);
  std::string out;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    if (i == 0) a = a.substr(a.rfind('/') == std::string::npos ? 0 : a.rfind('/') + 1);
    out += (i ? " " : "") + ShellQuote(a);
  }
  return out;
}

std::string UtcNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

// Like `nproc`: the CPUs this process may run on.
int NProc() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
}

std::string CpuModel() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("model name", 0) == 0) {
      const size_t c = line.find(':');
      if (c != std::string::npos) {
        const size_t s = line.find_first_not_of(" \t", c + 1);
        return s == std::string::npos ? "" : line.substr(s);
      }
    }
  }
  return "unknown";
}

// Counters of the pipeline (draft service and stages) summed over services, keyed
// "stage:<name>" for the sum over stages and "draft:<name>" for draft replicas.
std::optional<std::map<std::string, double>> PipelineCounters(v1::Router::Stub& stub,
                                                              std::string* error,
                                                              int* n_stages = nullptr,
                                                              std::string* draft_addr = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::ClusterStatsRequest req;
  req.set_include_stages(true);
  v1::ClusterStatsResponse resp;
  const grpc::Status st = stub.GetClusterStats(&ctx, req, &resp);
  if (!st.ok()) {
    *error = st.error_message();
    return std::nullopt;
  }
  std::map<std::string, double> out;
  int stages = 0;
  for (const auto& s : resp.services()) {
    std::string kind;
    if (s.service().rfind("stage", 0) == 0) kind = "stage";
    if (s.service().rfind("draft", 0) == 0) kind = "draft";
    if (kind.empty()) continue;
    if (s.has_error()) {
      *error = s.service() + ": " + s.error().message();
      return std::nullopt;
    }
    if (kind == "stage") ++stages;
    if (kind == "draft" && draft_addr && draft_addr->empty()) *draft_addr = s.address();
    for (const auto& c : s.counters()) out[kind + ":" + c.name()] += c.value();
  }
  if (n_stages) *n_stages = stages;
  return out;
}

struct ClusterInfo {
  std::string model = "unknown";
  std::string draft_model;
  int n_stages = 0;
  std::string defaults;  // the draft service's speculation defaults, when known
};

ClusterInfo QueryClusterInfo(v1::Router::Stub& stub, const std::string& draft_arg) {
  ClusterInfo info;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ListModelsResponse resp;
    if (stub.ListModels(&ctx, v1::ListModelsRequest(), &resp).ok() && resp.models_size() > 0) {
      const v1::ModelInfo& m = resp.models(0);
      info.model = m.id();
      info.draft_model = m.draft_model();
      info.n_stages = static_cast<int>(m.n_stages());
    }
  }
  std::string draft_addr = draft_arg;
  std::string err;
  int stats_stages = 0;
  PipelineCounters(stub, &err, &stats_stages, &draft_addr);
  if (info.n_stages == 0) info.n_stages = stats_stages;
  if (!draft_addr.empty()) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::DraftInfo di;
    if (v1::Draft::NewStub(BenchChannel(draft_addr))
            ->GetInfo(&ctx, v1::DraftInfoRequest(), &di)
            .ok()) {
      // (stage_addresses lists only the first and the last stage.)
      if (di.model().n_stages() > 0) info.n_stages = static_cast<int>(di.model().n_stages());
      if (!di.model().draft_model().empty()) info.draft_model = di.model().draft_model();
      const v1::SpecConfig& d = di.defaults();
      char buf[256];
      std::snprintf(buf, sizeof(buf),
                    "draft_max=%u p_accept=%.3g p_recovery=%.3g p_decay=%.3g max_inflight=%u",
                    d.draft_max(), d.p_accept(), d.p_recovery(), d.p_decay(), d.max_inflight());
      info.defaults = buf;
    }
  }
  return info;
}

// Runs one request; returns an error text, empty on success.
std::string RunRequest(v1::Router::Stub& stub, const BenchArgs& a, const std::string& prompt,
                       const Variant& v, RequestResult* r) {
  v1::CompletionRequest req;
  req.set_text(prompt);
  v1::GenerationOptions* o = req.mutable_options();
  o->set_max_tokens(static_cast<uint32_t>(a.max_tokens));
  o->mutable_sampling()->set_temperature(static_cast<float>(a.temperature));
  if (a.seed) o->mutable_sampling()->set_seed(*a.seed);
  o->set_ignore_eos(!a.stop_at_eos);
  v1::SpecConfig* spec = o->mutable_spec();
  spec->set_mode(v.mode);
  if (v.no_cancel) spec->set_no_cancel(true);
  if (v.no_continuous) spec->set_no_continuous(true);
  if (a.draft_max) spec->set_draft_max(*a.draft_max);
  if (a.max_inflight) spec->set_max_inflight(*a.max_inflight);
  if (a.p_accept) spec->set_p_accept(*a.p_accept);
  if (a.p_recovery) spec->set_p_recovery(*a.p_recovery);
  if (a.p_decay) spec->set_p_decay(*a.p_decay);

  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  const auto t0 = Clock::now();
  auto reader = stub.Complete(&ctx, req);
  std::optional<Clock::time_point> last;
  v1::GenerateEvent ev;
  std::string error;
  bool finished = false;
  while (reader->Read(&ev)) {
    if (ev.has_delta()) {
      const int n = ev.delta().token_ids_size();
      if (n == 0) continue;  // text only: its tokens came earlier
      const auto now = Clock::now();
      if (!last) {
        r->ttft_s = std::chrono::duration<double>(now - t0).count();
      } else {
        const double gap = std::chrono::duration<double>(now - *last).count();
        for (int i = 0; i < n; ++i) r->itl_s.push_back(gap / n);
      }
      last = now;
      for (uint32_t t : ev.delta().token_ids()) r->ids.push_back(t);
    } else if (ev.has_finished()) {
      finished = true;
      r->spec = ev.finished().spec();
      r->timings = ev.finished().timings();
      r->completion_tokens = ev.finished().usage().completion_tokens();
    } else if (ev.has_error()) {
      error = ev.error().message();
    }
  }
  const grpc::Status st = reader->Finish();
  r->wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!st.ok()) {
    return "Router.Complete (" + v.label +
           ") failed: " + (error.empty() ? st.error_message() : error) + " (gRPC code " +
           std::to_string(st.error_code()) + ")";
  }
  if (!finished) return "Router.Complete (" + v.label + ") ended without a Finished event";
  if (r->completion_tokens == 0) r->completion_tokens = r->ids.size();
  if (r->spec.mode() != v.mode) {
    return "requested mode " + v1::SpecMode_Name(v.mode) + " but the service ran " +
           v1::SpecMode_Name(r->spec.mode()) + " (is a draft model loaded?)";
  }
  return "";
}

struct Row {
  std::string label;
  int requests = 0;
  uint64_t tokens = 0;
  double wall_s = 0;
  double tok_s = NAN;
  double speedup = NAN;
  double ttft_p50_ms = NAN;
  double itl_p50_ms = NAN, itl_p99_ms = NAN;
  double acceptance = NAN;
  double runs_plain = 0, runs_spec = 0, runs_cancelled = 0, runs_tombstoned = 0;  // per request
  uint64_t drafted = 0, accepted = 0;
  std::map<std::string, double> stats;  // summed deltas
};

const char* kSkipped = "stage:runs_skipped_total";
const char* kStopped = "stage:runs_stopped_total";
const char* kStageBytes = "stage:sent_bytes_total";

int RunBench(const BenchArgs& a) {
  // Prompts.
  std::vector<std::string> prompts;
  if (!a.prompts_file.empty()) {
    std::ifstream f(a.prompts_file);
    if (!f) return Fail("cannot read " + a.prompts_file);
    for (std::string line; std::getline(f, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") != std::string::npos) prompts.push_back(line);
    }
    if (prompts.empty()) return Fail(a.prompts_file + " has no prompts");
  } else {
    prompts = kBuiltinPrompts;
  }

  // Rows.
  std::vector<Variant> variants;
  for (const auto& m : a.modes) {
    if (std::any_of(variants.begin(), variants.end(),
                    [&](const Variant& v) { return v.label == m; })) {
      continue;
    }
    variants.push_back({m, ModeFromName(m), false, false});
  }
  if (a.ablations) {
    variants.push_back({"pipeinfer --no-cancel", v1::SPEC_MODE_PIPEINFER, true, false});
    variants.push_back({"pipeinfer --no-continuous", v1::SPEC_MODE_PIPEINFER, false, true});
  }
  if (variants.empty()) return Fail("no modes to run");

  auto stub = v1::Router::NewStub(BenchChannel(a.router));
  const ClusterInfo info = QueryClusterInfo(*stub, a.draft);
  const std::string command = CommandLine();
  const std::string date = UtcNow();
  const int nproc = NProc();
  const std::string cpu = CpuModel();

  bool stats = a.stats;
  std::string err;
  if (stats && !PipelineCounters(*stub, &err)) {
    std::cerr << "warning: Router.GetClusterStats at " << a.router << " failed (" << err
              << "); continuing without --stats\n";
    stats = false;
  }

  // Warmup: the first prompt through every row, not recorded.
  for (int w = 0; w < a.warmup; ++w) {
    for (const auto& v : variants) {
      RequestResult r;
      const std::string e = RunRequest(*stub, a, prompts[0], v, &r);
      if (!e.empty()) return Fail("warmup: " + e);
    }
  }

  // Measured requests: one at a time, rows interleaved round-robin per prompt.
  std::vector<RequestResult> results;
  const bool progress = isatty(STDERR_FILENO);  // a live progress line, on terminals only
  const size_t total = static_cast<size_t>(a.repeat) * prompts.size() * variants.size();
  for (int rep = 0; rep < a.repeat; ++rep) {
    for (size_t p = 0; p < prompts.size(); ++p) {
      for (size_t vi = 0; vi < variants.size(); ++vi) {
        RequestResult r;
        r.variant = vi;
        r.prompt = p;
        r.repeat = rep;
        std::optional<std::map<std::string, double>> before;
        if (stats) before = PipelineCounters(*stub, &err);
        const std::string e = RunRequest(*stub, a, prompts[p], variants[vi], &r);
        if (!e.empty()) return Fail("prompt " + std::to_string(p + 1) + ": " + e);
        if (stats && before) {
          if (auto after = PipelineCounters(*stub, &err)) {
            for (const auto& [k, val] : *after) {
              auto it = before->find(k);
              r.stats_delta[k] = val - (it == before->end() ? 0.0 : it->second);
            }
          }
        }
        results.push_back(std::move(r));
        if (!progress) continue;
        std::fprintf(stderr, "\r[%zu/%zu] %-26s prompt %zu: %llu tokens in %.2f s", results.size(),
                     total, variants[vi].label.c_str(), p + 1,
                     static_cast<unsigned long long>(results.back().completion_tokens),
                     results.back().wall_s);
        std::fflush(stderr);
      }
    }
  }
  if (progress) std::fprintf(stderr, "\n");

  // Greedy identity: every request of a prompt (all rows, all repeats) gives the same ids.
  const bool greedy = a.temperature <= 0;
  bool identical = true;
  if (greedy) {
    std::map<size_t, const RequestResult*> ref;
    for (const auto& r : results) {
      auto [it, fresh] = ref.emplace(r.prompt, &r);
      if (fresh || it->second->ids == r.ids) continue;
      identical = false;
      const auto& want = it->second->ids;
      size_t i = 0;
      while (i < want.size() && i < r.ids.size() && want[i] == r.ids[i]) ++i;
      std::fprintf(stderr,
                   "mismatch: prompt %zu, %s (repeat %d) differs from %s at token %zu "
                   "(%zu vs %zu tokens)\n",
                   r.prompt + 1, variants[r.variant].label.c_str(), r.repeat + 1,
                   variants[it->second->variant].label.c_str(), i, r.ids.size(), want.size());
    }
  }

  // Aggregate.
  std::vector<Row> rows(variants.size());
  std::vector<std::vector<double>> ttft(variants.size()), itl(variants.size());
  for (size_t vi = 0; vi < variants.size(); ++vi) rows[vi].label = variants[vi].label;
  for (const auto& r : results) {
    Row& row = rows[r.variant];
    ++row.requests;
    row.tokens += r.completion_tokens;
    row.wall_s += r.wall_s;
    if (std::isfinite(r.ttft_s)) ttft[r.variant].push_back(r.ttft_s);
    itl[r.variant].insert(itl[r.variant].end(), r.itl_s.begin(), r.itl_s.end());
    row.runs_plain += r.spec.runs_plain();
    row.runs_spec += r.spec.runs_speculative();
    row.runs_cancelled += r.spec.runs_cancelled();
    row.runs_tombstoned += r.spec.runs_tombstoned();
    row.drafted += r.spec.tokens_drafted();
    row.accepted += r.spec.tokens_accepted();
    for (const auto& [k, val] : r.stats_delta) row.stats[k] += val;
  }
  double plain_tok_s = NAN;
  for (size_t vi = 0; vi < rows.size(); ++vi) {
    Row& row = rows[vi];
    if (row.wall_s > 0) row.tok_s = static_cast<double>(row.tokens) / row.wall_s;
    row.ttft_p50_ms = Percentile(ttft[vi], 0.5) * 1e3;
    row.itl_p50_ms = Percentile(itl[vi], 0.5) * 1e3;
    row.itl_p99_ms = Percentile(itl[vi], 0.99) * 1e3;
    if (row.drafted > 0) row.acceptance = static_cast<double>(row.accepted) / row.drafted;
    if (row.requests > 0) {
      row.runs_plain /= row.requests;
      row.runs_spec /= row.requests;
      row.runs_cancelled /= row.requests;
      row.runs_tombstoned /= row.requests;
    }
    if (variants[vi].mode == v1::SPEC_MODE_PLAIN && !variants[vi].no_cancel &&
        !variants[vi].no_continuous) {
      plain_tok_s = row.tok_s;
    }
  }
  for (Row& row : rows) row.speedup = row.tok_s / plain_tok_s;
  const auto has = [&](const char* key) {
    return std::any_of(rows.begin(), rows.end(), [&](const Row& r) { return r.stats.count(key); });
  };
  const bool show_skipped = stats && has(kSkipped);
  const bool show_stopped = stats && has(kStopped);
  const bool show_bytes = stats && has(kStageBytes);

  // Report.
  std::ostringstream md;
  md << "## pipeinfer bench: "
     << (info.n_stages > 0 ? std::to_string(info.n_stages) + "-stage cluster" : "cluster") << ", "
     << date << "\n\n";
  md << "- command: `" << command << "`\n";
  md << "- date: " << date << "\n";
  md << "- machine: nproc " << nproc << ", CPU " << cpu << "\n";
  md << "- model: " << info.model;
  if (!info.draft_model.empty()) md << ", draft " << info.draft_model;
  md << "; stages: " << (info.n_stages > 0 ? std::to_string(info.n_stages) : "unknown") << "\n";
  if (!info.defaults.empty()) md << "- draft service defaults: " << info.defaults << "\n";
  md << "- " << prompts.size() << " prompts" << (a.prompts_file.empty() ? " (built-in)" : "")
     << " x " << a.repeat << " repeat(s) per row, " << a.warmup << " warmup round(s); max_tokens "
     << a.max_tokens << (a.stop_at_eos ? "" : ", ignore_eos") << ", temperature " << a.temperature
     << "; one request at a time, rows interleaved per prompt\n";
  md << "\n";
  md << "| mode | requests | completion tokens | tokens/s | speedup vs plain | TTFT p50 ms "
        "| ITL p50 ms | ITL p99 ms | acceptance | runs plain/req | runs spec/req "
        "| cancelled/req | tombstoned/req |";
  if (show_skipped) md << " stage skipped/req |";
  if (show_stopped) md << " stage stopped/req |";
  if (show_bytes) md << " stage bytes sent/token |";
  md << "\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|";
  if (show_skipped) md << "--:|";
  if (show_stopped) md << "--:|";
  if (show_bytes) md << "--:|";
  md << "\n";
  for (const Row& r : rows) {
    md << "| " << r.label << " | " << r.requests << " | " << r.tokens << " | "
       << Fmt("%.2f", r.tok_s) << " | " << Fmt("%.2fx", r.speedup) << " | "
       << Fmt("%.1f", r.ttft_p50_ms) << " | " << Fmt("%.2f", r.itl_p50_ms) << " | "
       << Fmt("%.2f", r.itl_p99_ms) << " | " << Fmt("%.3f", r.acceptance) << " | "
       << Fmt("%.1f", r.runs_plain) << " | " << Fmt("%.1f", r.runs_spec) << " | "
       << Fmt("%.1f", r.runs_cancelled) << " | " << Fmt("%.1f", r.runs_tombstoned) << " |";
    const auto per_req = [&](const char* k) {
      auto it = r.stats.find(k);
      return it == r.stats.end() || r.requests == 0 ? NAN : it->second / r.requests;
    };
    if (show_skipped) md << " " << Fmt("%.1f", per_req(kSkipped)) << " |";
    if (show_stopped) md << " " << Fmt("%.1f", per_req(kStopped)) << " |";
    if (show_bytes) {
      auto it = r.stats.find(kStageBytes);
      md << " " << Fmt("%.0f", it == r.stats.end() || r.tokens == 0 ? NAN : it->second / r.tokens)
         << " |";
    }
    md << "\n";
  }
  md << "\n";
  md << "tokens/s = completion tokens / summed client wall time of the requests; TTFT = client "
        "time to the first delta (prefill included); ITL = gap between deltas, split evenly over "
        "the tokens of a delta; acceptance = tokens accepted / drafted; runs from the "
        "Finished.spec counters.\n\n";
  if (greedy) {
    md << "identical tokens across modes: " << (identical ? "yes" : "no") << "\n";
  } else {
    md << "identical tokens across modes: not checked (temperature > 0)\n";
  }

  const std::string text = md.str();
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
  if (!a.out.empty()) {
    std::ofstream f(a.out, std::ios::binary);
    f << text;
    if (!f) return Fail("cannot write " + a.out);
  }
  if (!a.json_out.empty()) {
    const auto num = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
    json j;
    j["command"] = command;
    j["date"] = date;
    j["machine"] = {{"nproc", nproc}, {"cpu", cpu}};
    j["cluster"] = {{"model", info.model},
                    {"draft_model", info.draft_model},
                    {"stages", info.n_stages},
                    {"draft_defaults", info.defaults}};
    j["config"] = {{"prompts", prompts},           {"max_tokens", a.max_tokens},
                   {"repeat", a.repeat},           {"warmup", a.warmup},
                   {"temperature", a.temperature}, {"ignore_eos", !a.stop_at_eos}};
    if (a.seed) j["config"]["seed"] = *a.seed;
    j["identical_tokens"] = greedy ? json(identical) : json(nullptr);
    j["rows"] = json::array();
    for (const Row& r : rows) {
      json row = {{"mode", r.label},
                  {"requests", r.requests},
                  {"completion_tokens", r.tokens},
                  {"wall_s", r.wall_s},
                  {"tokens_per_s", num(r.tok_s)},
                  {"speedup_vs_plain", num(r.speedup)},
                  {"ttft_p50_ms", num(r.ttft_p50_ms)},
                  {"itl_p50_ms", num(r.itl_p50_ms)},
                  {"itl_p99_ms", num(r.itl_p99_ms)},
                  {"acceptance", num(r.acceptance)},
                  {"tokens_drafted", r.drafted},
                  {"tokens_accepted", r.accepted},
                  {"runs_plain_per_request", r.runs_plain},
                  {"runs_speculative_per_request", r.runs_spec},
                  {"runs_cancelled_per_request", r.runs_cancelled},
                  {"runs_tombstoned_per_request", r.runs_tombstoned}};
      if (!r.stats.empty()) row["pipeline_counter_deltas"] = r.stats;
      j["rows"].push_back(row);
    }
    j["requests"] = json::array();
    for (const auto& r : results) {
      j["requests"].push_back({{"mode", variants[r.variant].label},
                               {"prompt", r.prompt},
                               {"repeat", r.repeat},
                               {"wall_s", r.wall_s},
                               {"ttft_s", num(r.ttft_s)},
                               {"completion_tokens", r.completion_tokens},
                               {"router_ttft_us", r.timings.ttft_us()},
                               {"router_total_us", r.timings.total_us()},
                               {"runs_plain", r.spec.runs_plain()},
                               {"runs_speculative", r.spec.runs_speculative()},
                               {"runs_cancelled", r.spec.runs_cancelled()},
                               {"runs_tombstoned", r.spec.runs_tombstoned()},
                               {"tokens_drafted", r.spec.tokens_drafted()},
                               {"tokens_accepted", r.spec.tokens_accepted()},
                               {"verifications", r.spec.verifications()},
                               {"token_ids", r.ids}});
    }
    std::ofstream f(a.json_out, std::ios::binary);
    f << j.dump(2) << "\n";
    if (!f) return Fail("cannot write " + a.json_out);
  }
  if (greedy && !identical) {
    std::cerr << "error: greedy token ids differ between modes\n";
    return 2;
  }
  return 0;
}

}  // namespace

void RegisterBenchCommands(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  BenchArgs& a = *args;
  auto* b = app.add_subcommand(
      "bench",
      "Run the same prompts through the speculation modes on a running cluster (Router gRPC) and "
      "print a markdown table; with temperature 0 also check that every mode gives the same "
      "tokens (exit status 2 if not)");
  b->add_option("--router", a.router, "Router gRPC HOST:PORT")->required();
  b->add_option("--draft", a.draft,
                "Draft service HOST:PORT, to record its defaults and stages in the header "
                "(optional)");
  b->add_option("--prompts", a.prompts_file,
                "File with one prompt per line (default: 6 built-in Jane Austen openings)");
  b->add_option("--max-tokens,-n", a.max_tokens, "Completion tokens per request")
      ->check(CLI::Range(1, 1 << 20));
  b->add_option("--modes", a.modes, "Comma-separated modes: plain, sync, pipeinfer")
      ->delimiter(',')
      ->check(CLI::IsMember({"plain", "sync", "pipeinfer"}));
  b->add_option("--repeat", a.repeat, "Times each prompt runs in each mode")
      ->check(CLI::Range(1, 1000));
  b->add_option("--warmup", a.warmup, "Unrecorded rounds (first prompt through every row)")
      ->check(CLI::Range(0, 100));
  b->add_option("--temperature", a.temperature, "Sampling temperature (0 = greedy)");
  b->add_option("--seed", a.seed, "Sampling seed");
  b->add_option("--draft-max", a.draft_max, "Most draft tokens per micro-batch");
  b->add_option("--p-accept", a.p_accept, "Draft confidence cutoff");
  b->add_option("--p-recovery", a.p_recovery, "Cutoff increase per micro-batch");
  b->add_option("--p-decay", a.p_decay, "Cutoff decrease per failed attempt");
  b->add_option("--max-inflight", a.max_inflight, "Most runs in flight per request");
  b->add_flag("--ablations", a.ablations,
              "Also rows `pipeinfer --no-cancel` and `pipeinfer --no-continuous`");
  b->add_flag("--stats", a.stats,
              "Query Router.GetClusterStats around each request and report stage runs "
              "skipped/stopped and bytes sent");
  b->add_flag("--stop-at-eos", a.stop_at_eos,
              "End a request at EOS (default: ignore EOS so every request has max-tokens tokens)");
  b->add_option("--out", a.out, "Also write the markdown report to this file");
  b->add_option("--json", a.json_out, "Write rows and per-request data as JSON to this file");
  b->final_callback([args] {
    if (int rc = RunBench(*args)) throw CLI::RuntimeError(rc);
  });
}

}  // namespace pipeinfer::cli
