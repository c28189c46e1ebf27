// Builders of the pipeline messages the stage tests send (to StageCore in process, or to a stage
// server over gRPC).
#pragma once

#include <cstdint>
#include <vector>

#include "pipeinfer/v1/stage.pb.h"

namespace pipeinfer::stage {

inline v1::StageDownstream Open(uint64_t sid) {
  v1::StageDownstream m;
  auto* o = m.mutable_session_open();
  o->set_session_id(sid);
  o->set_max_context(512);
  o->mutable_result()->set_kind(v1::RESULT_KIND_ARGMAX);
  return m;
}

inline v1::StageDownstream PlainRun(uint64_t rid, uint64_t sid, const std::vector<int32_t>& toks,
                                    int32_t first_pos, bool last_row_only = true) {
  v1::StageDownstream m;
  auto* r = m.mutable_run();
  r->set_run_id(rid);
  r->set_session_id(sid);
  r->set_kind(v1::RUN_KIND_PLAIN);
  for (size_t i = 0; i < toks.size(); ++i) {
    r->add_token_ids(toks[i]);
    r->add_positions(first_pos + static_cast<int32_t>(i));
  }
  if (last_row_only) r->add_result_rows(static_cast<uint32_t>(toks.size() - 1));
  return m;
}

inline v1::StageDownstream SpecRun(uint64_t rid, uint64_t sid, uint32_t part, uint32_t src,
                                   uint32_t n_prefix, const std::vector<int32_t>& toks) {
  v1::StageDownstream m;
  auto* r = m.mutable_run();
  r->set_run_id(rid);
  r->set_session_id(sid);
  r->set_kind(v1::RUN_KIND_SPECULATIVE);
  r->set_partition(part);
  r->mutable_fork()->set_partition(part);
  r->mutable_fork()->set_src_partition(src);
  r->mutable_fork()->set_n_positions(n_prefix);
  for (size_t i = 0; i < toks.size(); ++i) {
    r->add_token_ids(toks[i]);
    r->add_positions(n_prefix + static_cast<uint32_t>(i));
    r->add_result_rows(static_cast<uint32_t>(i));
  }
  return m;
}

inline v1::StageDownstream Commit(uint64_t sid, uint32_t part, uint32_t n, bool release) {
  v1::StageDownstream m;
  m.mutable_kv()->set_session_id(sid);
  auto* c = m.mutable_kv()->mutable_commit();
  c->set_partition(part);
  c->set_n_positions(n);
  c->set_release(release);
  return m;
}

}  // namespace pipeinfer::stage
