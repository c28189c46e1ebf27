// StageCore's runs and forward passes (continuous batching): assembling a pass from the queue
// (Step), checking a run and doing its bookkeeping up to the compute (PrepareRun), and its
// bookkeeping and outputs after the pass (FinishRun). See stage_core.h.
#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "metrics/metrics.h"
#include "pipeinfer/v1/stage.pb.h"
#include "stage/stage_core.h"
#include "stage/stage_wire.h"

namespace pipeinfer::stage {

struct StageCore::PendingRun {
  const v1::StageDownstream* msg = nullptr;
  std::chrono::steady_clock::time_point arrival;
  uint64_t sid = 0;
  Session* s = nullptr;
  bool plain = false;
  uint32_t part = 0;
  int32_t before = 0;  // the sequence's length before the run
  int32_t n = 0;
  std::vector<int32_t> branches;
  bool tree = false;            // a run with anchors (per-slot poison)
  std::vector<uint8_t> poison;  // tree: per run token, whether it hangs below a poisoned slot
  // The engine reads these until the pass is over.
  std::vector<int32_t> tokens, parents, anchors, rows;
  std::vector<float> hidden;
};

namespace {

uint64_t SessionOf(const v1::StageDownstream& m) {
  switch (m.msg_case()) {
    case v1::StageDownstream::kSessionOpen:
      // Orders everything like a barrier: its reservation was admitted by the controller after the
      // SessionCloses sent before it, so it must not overtake one of them.
      return 0;
    case v1::StageDownstream::kSessionClose:
      return m.session_close().session_id();
    case v1::StageDownstream::kRun:
      return m.run().session_id();
    case v1::StageDownstream::kKv:
      return m.kv().session_id();
    case v1::StageDownstream::kTombstone:
      return m.tombstone().session_id();
    default:
      return 0;  // barriers and unknown messages order everything
  }
}

bool Verified(const v1::Run& r) {
  if (r.priority() == v1::RUN_PRIORITY_VERIFIED) return true;
  if (r.priority() == v1::RUN_PRIORITY_SPECULATIVE) return false;
  return r.kind() == v1::RUN_KIND_PLAIN;
}

uint64_t MicrosSince(std::chrono::steady_clock::time_point a,
                     std::chrono::steady_clock::time_point b) {
  return b <= a ? 0
                : static_cast<uint64_t>(
                      std::chrono::duration_cast<std::chrono::microseconds>(b - a).count());
}

}  // namespace

StageOutput StageCore::Step(std::deque<QueuedMessage>& queue, size_t* taken) {
  if (taken) *taken = 0;
  if (queue.empty()) return StageOutput();
  // The window: a barrier, SessionOpen or unknown message is taken only when everything before it
  // is, and nothing behind it overtakes it. So the window ends at the first such message that
  // follows a message that will certainly wait (one queued behind a run of its own session).
  // Each session's first run in the window is a candidate for the pass.
  std::map<uint64_t, size_t> first_run;
  std::vector<size_t> candidates;
  bool some_wait = false;
  size_t window = 0;
  for (; window < queue.size(); ++window) {
    const v1::StageDownstream& m = *queue[window].msg;
    const uint64_t sid = SessionOf(m);
    if (sid == 0) {
      if (some_wait) break;
      continue;
    }
    if (first_run.count(sid)) {
      some_wait = true;
    } else if (m.has_run()) {
      first_run.emplace(sid, window);
      candidates.push_back(window);
    }
  }

  // Which runs join: the oldest candidate always goes, then verified runs, then speculative ones,
  // while tokens remain.
  std::set<size_t> chosen;
  int64_t budget = config_.max_batch_tokens;
  auto take = [&](size_t i) {
    chosen.insert(i);
    budget -= queue[i].msg->run().token_ids_size();
  };
  // Runs sent together should spread over the stages rather than travel as one convoy: at most
  // ceil(runs in flight / stages) per pass, when the controller says how many are in flight.
  size_t max_runs = candidates.size();
  uint32_t in_flight = 0;
  for (size_t i : candidates) in_flight = std::max(in_flight, queue[i].msg->run().pipeline_runs());
  if (in_flight > 0 && config_.n_stages > 1) {
    max_runs = std::max<size_t>(1, (in_flight + config_.n_stages - 1) / config_.n_stages);
  }
  if (!candidates.empty()) take(candidates.front());
  for (bool verified : {true, false}) {
    for (size_t i : candidates) {
      if (chosen.size() >= max_runs) break;
      const v1::Run& r = queue[i].msg->run();
      if (chosen.count(i) || Verified(r) != verified) continue;
      if (r.token_ids_size() <= budget) take(i);
    }
  }

  // Take messages in order: outputs are produced per message, in the order taken.
  std::vector<StageOutput> outs;
  std::vector<bool> used(window, false);
  std::set<uint64_t> blocked;  // sessions whose messages wait for the next pass
  engine::Engine::Batch batch(*engine_);
  std::vector<std::unique_ptr<PendingRun>> pending;
  std::vector<size_t> pending_out;  // outs index of each pending run
  for (size_t i = 0; i < window; ++i) {
    const v1::StageDownstream& m = *queue[i].msg;
    const uint64_t sid = SessionOf(m);
    if (sid == 0) {
      if (std::find(used.begin(), used.begin() + i, false) != used.begin() + i) break;
    } else if (blocked.count(sid)) {
      continue;
    }
    if (m.has_run() && sid == 0) {
      // Session 0 is never open: the run fails at once (PrepareRun's unknown-session path, an
      // error and a tombstone) in its place in the order. Left in the queue, it would block it.
      used[i] = true;
      PendingRun unused;
      StageOutput out;
      PrepareRun(m, batch, unused, out);
      outs.push_back(std::move(out));
      continue;
    }
    if (m.has_run()) {
      blocked.insert(sid);  // at most one run per session and pass; later ones wait behind it
      if (!chosen.count(i)) continue;
      used[i] = true;
      auto p = std::make_unique<PendingRun>();
      p->arrival = queue[i].arrival;
      StageOutput out;
      if (PrepareRun(m, batch, *p, out)) {
        pending_out.push_back(outs.size());
        pending.push_back(std::move(p));
      }
      outs.push_back(std::move(out));
      continue;
    }
    used[i] = true;
    outs.push_back(HandleMessage(m));
  }

  if (!pending.empty()) {
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    const int32_t batch_runs = batch.runs(), batch_tokens = batch.tokens();
    last_batch_ = engine::BatchStats();
    std::vector<engine::ForwardOutput> res = batch.Run(&last_batch_);
    if (config_.emulate_run_us > 0 || config_.emulate_token_us > 0) {
      // Padding to the emulated cost of the whole pass; a run cancelled meanwhile stops. The wait
      // sleeps until the deadline or a Cancel (no polling: idle stages must leave the CPU to the
      // others).
      const auto until = t0 + std::chrono::microseconds(
                                  config_.emulate_run_us +
                                  static_cast<uint64_t>(config_.emulate_token_us) * batch_tokens);
      std::unique_lock<std::mutex> l(cancel_mu_);
      while (true) {
        bool running = false;
        for (size_t k = 0; k < pending.size(); ++k) {
          if (res[k].stopped) continue;
          if (cancelled_.count(pending[k]->msg->run().run_id())) {
            res[k].stopped = true;
          } else {
            running = true;
          }
        }
        if (!running || cancel_cv_.wait_until(l, until) == std::cv_status::timeout) break;
      }
    }
    const auto t1 = Clock::now();
    const uint64_t us = MicrosSince(t0, t1);
    // Wall-clock stamps for traces: the steady times shifted by (wall - steady) now.
    const int64_t unix_t1 = std::chrono::duration_cast<std::chrono::microseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
    const auto unix_us = [&](Clock::time_point t) {
      return static_cast<uint64_t>(
          unix_t1 - std::chrono::duration_cast<std::chrono::microseconds>(t1 - t).count());
    };
    m_.forward_passes->Increment();
    m_.compute_seconds->Increment(static_cast<double>(us) * 1e-6);
    m_.forward_seconds->Observe(static_cast<double>(us) * 1e-6);
    m_.batch_runs->Observe(batch_runs);
    m_.batch_tokens->Observe(batch_tokens);
    for (size_t k = 0; k < pending.size(); ++k) {
      v1::StageTiming timing;
      timing.set_stage_index(config_.stage_index);
      timing.set_queue_us(MicrosSince(pending[k]->arrival, t0));
      timing.set_compute_us(us);
      timing.set_batch_runs(static_cast<uint32_t>(batch_runs));
      timing.set_batch_tokens(static_cast<uint32_t>(batch_tokens));
      timing.set_arrival_unix_us(unix_us(pending[k]->arrival));
      timing.set_start_unix_us(unix_us(t0));
      timing.set_end_unix_us(unix_us(t1));
      FinishRun(*pending[k], res[k], timing, outs[pending_out[k]]);
    }
  }

  StageOutput all;
  for (StageOutput& o : outs) {
    for (auto& f : o.forward) all.forward.push_back(std::move(f));
    for (auto& r : o.results) all.results.push_back(std::move(r));
    for (auto& e : o.errors) all.errors.push_back(std::move(e));
  }
  // Drop what was taken; what is left keeps its order at the front of the queue.
  size_t n_taken = 0;
  std::deque<QueuedMessage> rest;
  for (size_t i = 0; i < queue.size(); ++i) {
    if (i < window && used[i]) {
      ++n_taken;
    } else {
      rest.push_back(std::move(queue[i]));
    }
  }
  queue.swap(rest);
  if (taken) *taken = n_taken;
  UpdateKvGauges();
  return all;
}

bool StageCore::PrepareRun(const v1::StageDownstream& msg, engine::Engine::Batch& batch,
                           PendingRun& p, StageOutput& out) {
  const v1::Run& run = msg.run();
  const uint64_t sid = run.session_id();
  const uint64_t rid = run.run_id();
  auto it = sessions_.find(sid);
  if (it == sessions_.end() || it->second.failed) {
    if (it == sessions_.end()) {
      FailSession(sid, nullptr,
                  absl::FailedPreconditionError(absl::StrCat("run for unknown session ", sid)), rid,
                  out);
    }
    ForgetCancelled(rid);
    EmitTombstone(msg, v1::TOMBSTONE_REASON_SESSION_FAILED, out);
    return false;
  }
  Session& s = it->second;
  const int32_t n = run.token_ids_size();
  const bool plain = run.kind() == v1::RUN_KIND_PLAIN;
  const uint32_t part = run.partition();
  auto fail = [&](absl::Status st) {
    FailSession(sid, &s, std::move(st), rid, out);
    ForgetCancelled(rid);
    EmitTombstone(msg, v1::TOMBSTONE_REASON_SESSION_FAILED, out);
    return false;
  };

  // Run ids are non-zero and increase along each session's stream within an epoch.
  if (rid == 0 || rid <= s.last_run_id) {
    return fail(absl::InvalidArgumentError(
        rid == 0
            ? std::string("run id 0 (run ids are non-zero)")
            : absl::StrCat("run id ", rid, " is not greater than the session's previous run id ",
                           s.last_run_id, " (run ids increase within an epoch)")));
  }
  s.last_run_id = rid;
  // Structure checks that do not depend on KV state.
  if (run.kind() != v1::RUN_KIND_PLAIN && run.kind() != v1::RUN_KIND_SPECULATIVE) {
    return fail(absl::InvalidArgumentError("run kind unspecified"));
  }
  if (n < 1 || n > static_cast<int32_t>(config_.max_run_tokens)) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("run has ", n, " tokens (allowed 1..", config_.max_run_tokens, ")")));
  }
  if (run.positions_size() != n || (run.parents_size() != 0 && run.parents_size() != n) ||
      (run.branches_size() != 0 && run.branches_size() != n)) {
    return fail(absl::InvalidArgumentError("run arrays must have one entry per token"));
  }
  if (plain && (part != 0 || run.has_fork())) {
    return fail(absl::InvalidArgumentError("a PLAIN run writes canonical (partition 0), no fork"));
  }
  if (!plain && part == 0) {
    return fail(absl::InvalidArgumentError("a SPECULATIVE run needs a non-zero partition"));
  }
  if (run.has_fork() && run.fork().partition() != part) {
    return fail(absl::InvalidArgumentError("Run.fork.partition must equal Run.partition"));
  }
  std::vector<int32_t> parents(n), branches(n, 0);
  for (int32_t i = 0; i < n; ++i) {
    parents[i] = run.parents_size() ? run.parents(i) : i - 1;
    if (run.branches_size()) branches[i] = static_cast<int32_t>(run.branches(i));
    if (parents[i] < -1 || parents[i] >= i) {
      return fail(
          absl::InvalidArgumentError(absl::StrCat("token ", i, " has parent ", parents[i])));
    }
    if (plain && (parents[i] != i - 1 || branches[i] != 0)) {
      return fail(absl::InvalidArgumentError("a PLAIN run must be a linear chain on branch 0"));
    }
  }
  std::vector<int32_t> anchors(run.anchors().begin(), run.anchors().end());
  const bool tree = !anchors.empty();
  if (tree) {
    if (plain) return fail(absl::InvalidArgumentError("a PLAIN run has no anchors"));
    if (static_cast<int32_t>(anchors.size()) != n) {
      return fail(absl::InvalidArgumentError("run arrays must have one entry per token"));
    }
    for (int32_t i = 0; i < n; ++i) {
      if (anchors[i] < -1 || (parents[i] >= 0 && anchors[i] != -1)) {
        return fail(absl::InvalidArgumentError(absl::StrCat(
            "token ", i, " has anchor ", anchors[i], " (-1 or a slot, for root tokens only)")));
      }
    }
  }
  for (int32_t i = 0; i < run.result_rows_size(); ++i) {
    if (run.result_rows(i) >= static_cast<uint32_t>(n) ||
        (i > 0 && run.result_rows(i) <= run.result_rows(i - 1))) {
      return fail(absl::InvalidArgumentError("result_rows must be increasing indices < n_tokens"));
    }
  }
  const auto& hp = engine_->model().hparams();
  for (uint32_t id : run.token_ids()) {
    if (id >= hp.n_vocab) {
      return fail(
          absl::InvalidArgumentError(absl::StrCat("token id ", id, " >= n_vocab ", hp.n_vocab)));
    }
  }

  // The embedded fork happens in order, even if the run is then skipped.
  if (run.has_fork()) {
    absl::Status st = ApplyFork(sid, s, part, run.fork().src_partition(), run.fork().src_branch(),
                                run.fork().n_positions());
    if (!st.ok()) return fail(st);
  }
  if (!plain) {
    auto q = s.parts.find(part);
    if (q == s.parts.end() || (q->second.written && !(tree && q->second.tree))) {
      return fail(absl::FailedPreconditionError(
          absl::StrCat("partition ", part, " is not live or was already written")));
    }
  }

  auto skip = [&](int reason) {
    absl::Status st =
        tree ? PoisonRun(sid, s, run.kind(), part, static_cast<uint32_t>(n), parents, anchors)
             : PoisonRun(sid, s, run.kind(), part, static_cast<uint32_t>(n));
    if (!st.ok()) FailSession(sid, &s, st, rid, out);
    ForgetCancelled(rid);
    EmitTombstone(msg, reason, out);
    return false;
  };
  if (IsCancelled(rid)) {
    m_.runs_skipped->Increment();
    return skip(v1::TOMBSTONE_REASON_CANCELLED);
  }

  // Positions and poison.
  const kv::Sequence* seq = engine_->kv().Find(sid, part);
  const int32_t before = seq->size();
  std::vector<uint8_t> poison;
  if (tree) {
    // Per-slot poison: a token below a poisoned slot holds nothing real; a run that is all such
    // tokens is skipped.
    Partition& tp = s.parts[part];
    MakeTree(tp, before);
    poison.resize(n);
    bool all = true;
    for (int32_t i = 0; i < n; ++i) {
      if (parents[i] >= 0) {
        poison[i] = poison[parents[i]];
      } else {
        const int32_t slot = anchors[i] >= 0 ? anchors[i] : before - 1;
        if (slot >= before) {
          return fail(absl::InvalidArgumentError(
              absl::StrCat("token ", i, " hangs off slot ", slot, " of a partition of ", before)));
        }
        poison[i] = slot >= 0 ? tp.poisoned[slot] : 0;
      }
      all = all && poison[i];
    }
    if (all) {
      m_.runs_dependency->Increment();
      return skip(v1::TOMBSTONE_REASON_DEPENDENCY);
    }
  } else {
    const int32_t valid = plain ? s.canonical_valid : s.parts[part].valid_len;
    if (valid != kAllValid && valid < before) {
      m_.runs_dependency->Increment();
      return skip(v1::TOMBSTONE_REASON_DEPENDENCY);
    }
  }
  const int32_t root = before == 0 ? 0 : seq->position.back() + 1;
  std::vector<int32_t> pos(n);
  std::map<int32_t, int32_t> last_of_branch;
  for (int32_t i = 0; i < n; ++i) {
    if (parents[i] >= 0) {
      pos[i] = pos[parents[i]] + 1;
    } else if (tree && anchors[i] >= 0) {
      pos[i] = seq->position[anchors[i]] + 1;
    } else {
      pos[i] = root;
    }
    if (static_cast<int32_t>(run.positions(i)) != pos[i]) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat("token ", i, " has position ", run.positions(i), ", expected ", pos[i])));
    }
    if (pos[i] >= static_cast<int32_t>(s.max_context)) {
      return fail(absl::OutOfRangeError(
          absl::StrCat("position ", pos[i], " reaches the session's context ", s.max_context)));
    }
    auto lb = last_of_branch.find(branches[i]);
    if (lb != last_of_branch.end() && parents[i] != lb->second) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat("tokens of branch ", branches[i], " do not form a chain")));
    }
    last_of_branch[branches[i]] = i;
  }

  p.msg = &msg;
  p.sid = sid;
  p.s = &s;
  p.plain = plain;
  p.part = part;
  p.before = before;
  p.n = n;
  p.branches = std::move(branches);
  p.parents = std::move(parents);
  p.tree = tree;
  p.anchors = std::move(anchors);
  p.poison = std::move(poison);
  if (!engine_->model().is_first()) {
    if (!run.has_hidden()) return fail(absl::InvalidArgumentError("run without hidden states"));
    absl::Status st = DecodeHidden(run.hidden(), n, hp.n_embd, &p.hidden);
    if (!st.ok()) return fail(st);
  }
  p.tokens.assign(run.token_ids().begin(), run.token_ids().end());
  p.rows.assign(run.result_rows().begin(), run.result_rows().end());
  engine::ForwardInput in;
  in.session = sid;
  in.partition = part;
  in.n_tokens = n;
  if (engine_->model().is_first()) {
    in.tokens = p.tokens;
  } else {
    in.hidden = p.hidden;
  }
  in.parents = p.parents;
  in.anchors = p.anchors;
  if (engine_->model().is_last()) in.output_rows = p.rows;
  in.cancelled = [this, rid] { return IsCancelled(rid); };
  if (absl::Status st = batch.Add(in); !st.ok()) return fail(st);
  return true;
}

void StageCore::FinishRun(PendingRun& p, engine::ForwardOutput& res, const v1::StageTiming& timing,
                          StageOutput& out) {
  const v1::StageDownstream& msg = *p.msg;
  const v1::Run& run = msg.run();
  const uint64_t rid = run.run_id();
  Session& s = *p.s;
  ForgetCancelled(rid);
  if (!res.error.ok()) {
    // The pass failed on the stage's device: the session cannot go on here.
    FailSession(p.sid, &s, res.error, rid, out);
    EmitTombstone(msg, v1::TOMBSTONE_REASON_SESSION_FAILED, out);
    return;
  }
  if (res.stopped) {
    // Slots were appended; what they hold is incomplete: poisoned.
    if (p.plain) {
      s.canonical_valid = std::min(s.canonical_valid, p.before);
    } else if (p.tree) {
      Partition& tp = s.parts[p.part];
      tp.poisoned.resize(static_cast<size_t>(p.before + p.n), 0);
      for (int32_t i = 0; i < p.n; ++i) tp.poisoned[p.before + i] = 1;
    } else {
      s.parts[p.part].written = true;
      s.parts[p.part].valid_len = std::min(s.parts[p.part].valid_len, s.parts[p.part].prefix_len);
    }
    m_.runs_stopped->Increment();
    v1::StageTiming partial = timing;
    partial.set_stopped(true);
    EmitTombstone(msg, v1::TOMBSTONE_REASON_CANCELLED, out, &partial);
    return;
  }
  if (p.plain) {
    if (s.canonical_valid == p.before) s.canonical_valid = p.before + p.n;
  } else {
    Partition& q = s.parts[p.part];
    q.written = true;
    for (int32_t i = 0; i < p.n; ++i) q.branch_leaf[p.branches[i]] = res.slots[i];
    if (p.tree) {
      q.poisoned.resize(static_cast<size_t>(p.before + p.n), 0);
      for (int32_t i = 0; i < p.n; ++i) q.poisoned[res.slots[i]] = p.poison[i];
    }
  }
  m_.runs_computed->Increment();
  m_.tokens_computed->Increment(static_cast<double>(p.n));

  const auto& hp = engine_->model().hparams();
  if (engine_->model().is_last()) {
    auto r = std::make_unique<v1::ResultsDownstream>();
    v1::RunResult* rr = r->mutable_result();
    rr->set_run_id(rid);
    rr->set_session_id(p.sid);
    const v1::ResultSpec& spec =
        (run.has_result() && run.result().kind() != v1::RESULT_KIND_UNSPECIFIED) ? run.result()
                                                                                 : *s.result;
    for (size_t i = 0; i < p.rows.size(); ++i) {
      v1::ResultRow* row = rr->add_rows();
      row->set_index(static_cast<uint32_t>(p.rows[i]));
      const float* lg = res.logits.data() + i * hp.n_vocab;
      if (spec.kind() == v1::RESULT_KIND_SPARSE) {
        SparseRow(lg, hp.n_vocab, spec, config_.max_sparse_candidates, row->mutable_sparse());
      } else {
        ReduceRow(lg, hp.n_vocab, spec.kind(), row);
      }
    }
    *rr->mutable_trace() = run.trace();
    *rr->add_trace() = timing;
    out.results.push_back(std::move(r));
  } else {
    auto m = std::make_unique<v1::StageDownstream>();
    v1::Run* next = m->mutable_run();
    *next = run;
    next->clear_hidden();
    EncodeHidden(res.hidden, p.n, hp.n_embd, config_.hidden_dtype_out, next->mutable_hidden());
    *next->add_trace() = timing;
    out.forward.push_back(std::move(m));
  }
}

}  // namespace pipeinfer::stage
