#include "draft_server/pipeline_proto.h"

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace pipeinfer::draft_server {

v1::ResultSpec ResultSpecFor(const sampling::SamplingParams& params, bool logprobs) {
  // ARGMAX rows suffice for greedy decoding without penalties; everything else needs the logits.
  const bool no_penalty = !sampling::AdjustsLogits(params) && !logprobs;
  const bool argmax_only = params.temperature <= 0.0f && no_penalty;
  // Sampling without penalties and with a top-k bound: SPARSE rows (a few candidates) instead of
  // the full vocabulary's logits.
  const bool sparse = !argmax_only && params.temperature > 0.0f && params.top_k > 0 && no_penalty;
  v1::ResultSpec rs;
  if (argmax_only) {
    rs.set_kind(v1::RESULT_KIND_ARGMAX);
  } else if (sparse) {
    // The last stage applies the history-free part of the sampler; top_k bounds the candidates,
    // so the filtered distribution is exact.
    rs.set_kind(v1::RESULT_KIND_SPARSE);
    rs.set_max_candidates(static_cast<uint32_t>(params.top_k));
    rs.mutable_filter()->set_temperature(params.temperature);
    rs.mutable_filter()->set_top_k(static_cast<uint32_t>(params.top_k));
    rs.mutable_filter()->set_top_p(params.top_p);
    rs.mutable_filter()->set_min_p(params.min_p);
  } else {
    rs.set_kind(v1::RESULT_KIND_FULL);
  }
  return rs;
}

v1::StageDownstream RunMessage(uint64_t session_id, const spec::RunSpec& run) {
  v1::StageDownstream m;
  auto* r = m.mutable_run();
  r->set_session_id(session_id);
  r->set_kind(run.speculative ? v1::RUN_KIND_SPECULATIVE : v1::RUN_KIND_PLAIN);
  r->set_priority(run.verified ? v1::RUN_PRIORITY_VERIFIED : v1::RUN_PRIORITY_SPECULATIVE);
  r->set_partition(run.partition);
  if (run.fork) {
    auto* f = r->mutable_fork();
    f->set_partition(run.fork->partition);
    f->set_src_partition(run.fork->src_partition);
    f->set_src_branch(run.fork->src_branch);
    f->set_n_positions(run.fork->n_positions);
  }
  for (int32_t t : run.tokens) r->add_token_ids(static_cast<uint32_t>(t));
  for (uint32_t p : run.positions) r->add_positions(p);
  for (int32_t p : run.parents) r->add_parents(p);
  for (uint32_t b : run.branches) r->add_branches(b);
  for (uint32_t i : run.result_rows) r->add_result_rows(i);
  for (int32_t a : run.anchors) r->add_anchors(a);
  return m;
}

v1::StageDownstream KvOpMessage(uint64_t session_id, const spec::KvOpSpec& op) {
  v1::StageDownstream m;
  auto* k = m.mutable_kv();
  k->set_session_id(session_id);
  if (op.kind == spec::KvOpSpec::Kind::kCommit) {
    auto* c = k->mutable_commit();
    c->set_partition(op.partition);
    c->set_branch(op.branch);
    c->set_n_positions(op.n_positions);
    c->set_release(op.release);
  } else {
    for (uint32_t p : op.partitions) k->mutable_release()->add_partitions(p);
  }
  return m;
}

absl::Status ToOutcome(const v1::ResultsDownstream& m, uint32_t n_vocab, spec::Outcome* out) {
  if (m.has_tombstone()) {
    out->run_id = m.tombstone().run_id();
    out->tombstone = true;
    out->tombstone_reason = absl::StrCat("stage ", m.tombstone().stage_index(), " ",
                                         v1::TombstoneReason_Name(m.tombstone().reason()));
    return absl::OkStatus();
  }
  const v1::RunResult& r = m.result();
  out->run_id = r.run_id();
  out->rows.resize(static_cast<size_t>(r.rows_size()));
  for (int i = 0; i < r.rows_size(); ++i) {
    const v1::ResultRow& row = r.rows(i);
    spec::TargetRow& t = out->rows[static_cast<size_t>(i)];
    if (row.has_argmax()) {
      t.kind = spec::TargetRow::Kind::kArgmax;
      t.argmax = static_cast<int32_t>(row.argmax().token_id());
    } else if (row.has_sparse()) {
      if (row.sparse().token_ids_size() == 0 ||
          row.sparse().probs_size() != row.sparse().token_ids_size()) {
        return absl::InternalError(absl::StrCat("run ", r.run_id(), ": malformed SPARSE row"));
      }
      t.kind = spec::TargetRow::Kind::kSparse;
      for (int j = 0; j < row.sparse().token_ids_size(); ++j) {
        t.sparse.ids.push_back(static_cast<int32_t>(row.sparse().token_ids(j)));
        t.sparse.probs.push_back(row.sparse().probs(j));
      }
    } else if (row.has_full()) {
      if (row.full().logits_f32().size() != size_t{n_vocab} * 4) {
        return absl::InternalError(
            absl::StrCat("run ", r.run_id(), ": a FULL row must hold ", n_vocab, " logits"));
      }
      t.kind = spec::TargetRow::Kind::kFull;
      t.logits.resize(n_vocab);
      std::memcpy(t.logits.data(), row.full().logits_f32().data(), size_t{n_vocab} * 4);
    } else {
      return absl::InternalError(
          absl::StrCat("run ", r.run_id(), ": a result row without a value"));
    }
  }
  return absl::OkStatus();
}

absl::Status StatusFromDetail(const v1::ErrorDetail& e) {
  auto code = static_cast<absl::StatusCode>(e.code());
  if (code == absl::StatusCode::kOk) code = absl::StatusCode::kInternal;
  const std::string origin = e.origin().empty() ? std::string("pipeline") : e.origin();
  return absl::Status(code, absl::StrCat(origin, ": ", e.message()));
}

}  // namespace pipeinfer::draft_server
