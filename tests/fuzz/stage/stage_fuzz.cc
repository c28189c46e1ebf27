// libFuzzer target for the stage message handling: the input is decoded into a sequence of
// StageDownstream messages (session opens and closes, plain and speculative runs with forks,
// parents, branches and anchors, KV operations, tombstones, barriers, cancels), fed to a 2-stage
// chain of StageCores over tests/fixtures/models/tiny-f32.gguf through Step (continuous batching)
// or Handle. Whatever the messages, a stage must answer with outputs or session errors: no
// crash, no sanitizer report, no hang, and every run must get exactly one outcome.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <memory>
#include <vector>

#include <spdlog/spdlog.h>

#include "engine/engine.h"
#include "gguf/llama.h"
#include "gguf/reader.h"
#include "pipeinfer/v1/stage.pb.h"
#include "stage/stage_core.h"

namespace {

using pipeinfer::stage::QueuedMessage;
using pipeinfer::stage::StageCore;
using pipeinfer::stage::StageOutput;
namespace v1 = pipeinfer::v1;

// Reads the input front to back; 0 once it is used up.
class Bytes {
 public:
  Bytes(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  bool empty() const { return i_ >= n_; }
  uint32_t U8() { return i_ < n_ ? d_[i_++] : 0; }
  uint32_t U16() { return U8() | (U8() << 8); }
  uint32_t U32() { return U16() | (U16() << 16); }

 private:
  const uint8_t* d_;
  size_t n_;
  size_t i_ = 0;
};

std::vector<std::unique_ptr<StageCore>>& Stages() {
  static auto* stages = [] {
    spdlog::set_level(spdlog::level::off);  // session failures are the normal case here
    auto* v = new std::vector<std::unique_ptr<StageCore>>();
    auto f = pipeinfer::gguf::GgufFile::Open(PIPEINFER_FIXTURES_DIR "/models/tiny-f32.gguf");
    if (!f.ok()) std::abort();
    std::shared_ptr<pipeinfer::gguf::GgufFile> file(std::move(*f));
    auto hp = pipeinfer::gguf::LlamaHParams::FromGguf(*file);
    auto split = pipeinfer::gguf::SplitLayers(hp->n_layer, 2);
    if (!split.ok()) std::abort();
    for (uint32_t i = 0; i < 2; ++i) {
      auto m = pipeinfer::engine::StageModel::FromFile(file, (*split)[i]);
      if (!m.ok()) std::abort();
      pipeinfer::engine::EngineOptions o;
      o.threads = 1;
      o.kv_capacity_tokens = 256;
      auto e = pipeinfer::engine::Engine::Create(std::move(*m), o);
      if (!e.ok()) std::abort();
      pipeinfer::stage::StageCoreConfig c;
      c.stage_index = i;
      c.n_stages = 2;
      c.max_run_tokens = 16;
      c.max_batch_tokens = 24;
      v->push_back(std::make_unique<StageCore>(std::move(*e), c));
    }
    return v;
  }();
  return *stages;
}

// One message decoded from the input.
v1::StageDownstream Decode(Bytes& in, uint64_t& next_run_id) {
  v1::StageDownstream m;
  const uint32_t op = in.U8();
  const uint64_t sid = in.U8() % 5;  // 0 is invalid
  // Mostly increasing run ids (what a controller sends), sometimes anything.
  const uint32_t rid_step = in.U8();
  const uint64_t rid = rid_step == 0xff ? in.U8() : (next_run_id += 1 + rid_step % 3);
  switch (op % 10) {
    case 0: {
      auto* o = m.mutable_session_open();
      o->set_session_id(sid);
      o->set_max_context(in.U16() % 300);
      if (in.U8() & 1) o->set_kv_reserve_tokens(in.U16());
      o->set_max_partitions(in.U8() % 8);
      o->mutable_result()->set_kind(static_cast<v1::ResultKind>(in.U8() % 4));
      o->mutable_result()->set_max_candidates(in.U8());
      break;
    }
    case 1:
      m.mutable_session_close()->set_session_id(sid);
      break;
    case 2:
    case 3:
    case 4: {
      auto* r = m.mutable_run();
      r->set_run_id(rid);
      r->set_session_id(sid);
      const bool spec = op % 10 != 2;
      r->set_kind(spec ? v1::RUN_KIND_SPECULATIVE : v1::RUN_KIND_PLAIN);
      const uint32_t n = 1 + in.U8() % 8;
      const uint32_t first = in.U8() % 64;
      const uint32_t flags = in.U8();
      if (spec) {
        r->set_partition(in.U8() % 4);
        if (flags & 1) {
          r->mutable_fork()->set_partition(r->partition());
          r->mutable_fork()->set_src_partition(in.U8() % 4);
          r->mutable_fork()->set_n_positions(in.U8() % 64);
        }
      }
      for (uint32_t i = 0; i < n; ++i) {
        r->add_token_ids(static_cast<int32_t>(in.U16() % 300) - 2);
        r->add_positions(static_cast<int32_t>(first + i + ((flags & 2) ? in.U8() % 3 : 0)));
        if (flags & 4) r->add_parents(static_cast<int32_t>(in.U8() % (i + 2)) - 1);
        if (flags & 8) r->add_branches(in.U8() % 3);
        if (flags & 16) r->add_anchors(static_cast<int32_t>(in.U8() % 70) - 2);
        if (flags & 32 || i + 1 == n) r->add_result_rows(i);
      }
      if (flags & 64) r->set_priority(static_cast<v1::RunPriority>(in.U8() % 3));
      break;
    }
    case 5: {
      auto* kv = m.mutable_kv();
      kv->set_session_id(sid);
      const uint32_t which = in.U8() % 4;
      if (which == 0) {
        auto* c = kv->mutable_commit();
        c->set_partition(in.U8() % 4);
        c->set_n_positions(in.U8() % 70);
        c->set_branch(in.U8() % 3);
        c->set_release(in.U8() & 1);
      } else if (which == 1) {
        auto* f = kv->mutable_fork();
        f->set_partition(in.U8() % 4);
        f->set_src_partition(in.U8() % 4);
        f->set_n_positions(in.U8() % 70);
      } else if (which == 2) {
        kv->mutable_release()->add_partitions(in.U8() % 4);
      } else {
        kv->mutable_truncate()->set_n_positions(in.U8() % 70);
      }
      break;
    }
    case 6: {
      auto* t = m.mutable_tombstone();
      t->set_run_id(rid);
      t->set_session_id(sid);
      t->set_reason(static_cast<v1::TombstoneReason>(in.U8() % 4));
      t->set_kind(static_cast<v1::RunKind>(in.U8() % 3));
      t->set_partition(in.U8() % 4);
      t->set_n_tokens(in.U8() % 9);
      break;
    }
    case 7:
      m.mutable_barrier()->set_barrier_id(in.U32());
      break;
    default: {
      // A raw protobuf (whatever the other fields hold): the parser's output must be handled too.
      const uint32_t len = in.U8() % 48;
      std::string raw;
      for (uint32_t i = 0; i < len; ++i) raw.push_back(static_cast<char>(in.U8()));
      if (!m.ParseFromString(raw)) m.Clear();
      if (m.has_open()) m.Clear();  // handled by the transport, never by StageCore
      break;
    }
  }
  return m;
}

// Runs `msgs` through the chain; counts what comes out of the last stage.
void RunChain(std::vector<v1::StageDownstream> msgs, bool batched) {
  auto& stages = Stages();
  for (auto& st : stages) {
    std::vector<v1::StageDownstream> next;
    auto take = [&](StageOutput& o) {
      for (auto& f : o.forward) next.push_back(*f);
    };
    if (batched) {
      std::deque<QueuedMessage> q;
      for (auto& m : msgs) {
        q.push_back({std::make_unique<v1::StageDownstream>(std::move(m)),
                     std::chrono::steady_clock::now()});
      }
      while (!q.empty()) {
        size_t taken = 0;
        StageOutput o = st->Step(q, &taken);
        if (taken == 0) std::abort();  // Step must make progress
        take(o);
      }
    } else {
      for (const auto& m : msgs) {
        StageOutput o = st->Handle(m);
        take(o);
      }
    }
    msgs = std::move(next);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  const uint32_t mode = in.U8();
  std::vector<v1::StageDownstream> msgs;
  uint64_t next_run_id = 0;
  std::vector<uint64_t> cancels;
  while (!in.empty() && msgs.size() < 64) {
    msgs.push_back(Decode(in, next_run_id));
    if (msgs.back().has_run() && (in.U8() & 7) == 0) cancels.push_back(msgs.back().run().run_id());
  }
  for (auto& st : Stages()) {
    st->Reset();
    st->Cancel(cancels);
  }
  RunChain(std::move(msgs), mode & 1);
  for (auto& st : Stages()) st->Reset();
  return 0;
}
