// The draft model of the draft service: a whole llama model on this process's CPU, shared by all
// sessions (one KV cache with one canonical sequence and one speculative partition per session),
// and the per-session spec::Drafter over it. No gRPC.
//
// Forward passes are batched across sessions (continuous batching, as on the stages): the
// sessions that want draft logits at the same moment share one pass, which reads the weights
// once. A worker thread computes the passes; a session's thread queues its request and waits.
// Its wait can be interrupted (its session has a pipeline result to handle, which must not wait
// for drafting): a request still queued is withdrawn; one already in the running pass completes
// and the session's drafter picks its answer up when it drafts again. Keeping a session's
// committed prefix (Adopt) is only recorded and done inside its next pass, so that handling a
// result never touches the draft model.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "draft_server/oracle_ranks.h"
#include "engine/engine.h"
#include "spec/controller.h"

namespace pipeinfer::draft_server {

struct DraftModelOptions {
  std::string path;         // the draft GGUF
  std::string target_path;  // the target GGUF, whose vocabulary the draft must share
  int32_t threads = 1;
  engine::WeightMemory weight_memory = engine::WeightMemory::kHugePages;
  int64_t kv_tokens = 0;  // KV slots over all sessions; 0 = 8 contexts' worth
  // Benchmarks: with this probability (decided by a hash of the sequence, so every mode sees the
  // same draft), the draft's top token is moved away from rank 1 (where to: rank_model): a way to
  // set the draft's agreement with the target, e.g. with the target itself as the draft ("oracle"
  // draft; docs/draft-emulation.md). 0 = off.
  double noise = 0.0;
  // Benchmarks: where a "wrong" noisy draft puts the top token (oracle_noise.h).
  RankModel rank_model = RankModel::kDemo;
  // Benchmarks: every forward pass lasts at least this many microseconds per token in the pass
  // (measured from the pass start; the worker sleeps the rest), to emulate a costlier draft model.
  // 0 = off.
  int64_t emulate_us_per_token = 0;
};

class DraftModel {
 public:
  // Loads the draft and checks that its vocabulary is the target's, token for token (same
  // pieces, same count); refuses with a readable message otherwise.
  static absl::StatusOr<std::unique_ptr<DraftModel>> Load(const DraftModelOptions& options);

  const std::string& name() const { return name_; }
  uint32_t n_vocab() const { return n_vocab_; }
  int32_t n_ctx() const { return engine_->max_context(); }

  // Each session's draft KV is multibuffered like the stages': a canonical sequence (committed
  // tokens) and one speculative partition (kSpec) forked from a prefix of it.
  static constexpr uint32_t kSpec = 1;
  struct Request;
  // Queues a request: make kSpec hold the first `keep` positions of its current path (or, when
  // `from_canonical`, of canonical), then run `tokens` after them; its answer is the last token's
  // logits. Opens the session on first use. At most one request per session at a time.
  std::shared_ptr<Request> Submit(uint64_t session, bool from_canonical, int32_t keep,
                                  std::span<const int32_t> tokens);
  // Waits for the request's answer. CANCELLED when `interrupt` (polled while waiting; optional)
  // said so: a request still queued is then withdrawn (`withdrawn` true: kSpec untouched), one in
  // the running pass goes on and can be awaited again.
  absl::StatusOr<std::vector<float>> Await(const std::shared_ptr<Request>& request,
                                           const std::function<bool()>& interrupt,
                                           bool* withdrawn = nullptr);
  // Whether the request has its answer (or failed, or was withdrawn).
  bool Done(const std::shared_ptr<Request>& request) const;
  // Wakes every Await so that it checks its interrupt again (a session's result arrived).
  void Wake();
  // Submit + Await without interruption.
  absl::StatusOr<std::vector<float>> Feed(uint64_t session, bool from_canonical, int32_t keep,
                                          std::span<const int32_t> tokens);
  ~DraftModel();
  // Canonical becomes the first `n` positions of kSpec's path (kSpec stays). Recorded now, done
  // before the session's next pass.
  void Adopt(uint64_t session, int32_t n);
  void CloseSession(uint64_t session);

  // Forward passes computed so far, and the session requests they served (for tests and stats:
  // requests / passes is the batching factor).
  uint64_t passes() const;
  uint64_t requests() const;
  // Called after every forward pass with the number of sessions it served and its duration in
  // seconds (metrics). Set before the model is shared.
  void SetPassObserver(std::function<void(size_t sessions, double seconds)> observer) {
    on_pass_ = std::move(observer);
  }

 private:
  DraftModel() = default;
  void Worker();
  // One forward pass: prepares the KV of requests not started yet (adoption, kSpec), then computes
  // the next chunk of each, shortest remaining first, within max_pass_tokens_. Only the worker
  // calls it (it alone touches engine_ while busy_).
  void RunPass(std::vector<std::shared_ptr<Request>>& batch);
  absl::Status PrepareKv(Request& r);

  mutable std::mutex mu_;  // guards the fields below; never held during a forward pass
  std::condition_variable cv_;
  bool busy_ = false;  // the worker is computing a batch
  bool stop_ = false;
  std::deque<std::shared_ptr<Request>> queue_;  // requests waiting for the next batch
  std::thread worker_;
  std::map<uint64_t, int32_t> adopt_;  // recorded adoptions, per session
  uint64_t passes_ = 0, requests_ = 0;
  std::function<void(size_t, double)> on_pass_;

  std::unique_ptr<engine::Engine> engine_;
  std::string name_;
  uint32_t n_vocab_ = 0;
  int32_t max_run_tokens_ = 64;   // the longest chunk of one request in a pass
  int32_t max_pass_tokens_ = 64;  // a pass's tokens beyond its first request's chunk
  double noise_ = 0.0;
  RankModel rank_model_ = RankModel::kDemo;
  int64_t emulate_us_per_token_ = 0;
  friend class SessionDrafter;
};

// A session's drafter: remembers which tokens its speculative buffer holds and feeds only the new
// suffix, cutting the buffer back to the longest common prefix when the assumed sequence changed (a
// rejection); committed tokens are adopted into canonical (Committed), which a cut never touches.
class SessionDrafter : public spec::Drafter {
 public:
  SessionDrafter(DraftModel* model, uint64_t session) : model_(model), session_(session) {}
  ~SessionDrafter() override;
  SessionDrafter(const SessionDrafter&) = delete;
  SessionDrafter& operator=(const SessionDrafter&) = delete;

  // CANCELLED (nothing changed) when the interrupt set by SetInterrupt fired while it waited.
  absl::StatusOr<std::span<const float>> NextLogits(std::span<const int32_t> sequence) override;
  // What interrupts the wait for a draft pass (this session's pipeline result is waiting).
  void SetInterrupt(std::function<bool()> interrupt) { interrupt_ = std::move(interrupt); }
  void Committed(std::span<const int32_t> committed) override;
  uint64_t tokens_fed() const { return tokens_fed_; }
  size_t canonical_length() const { return canon_; }

 private:
  DraftModel* model_;
  uint64_t session_;
  std::vector<int32_t> fed_;   // the path of the speculative partition (its K/V exist), in order
  size_t canon_ = 0;           // how many of fed_ are also in canonical (committed)
  std::vector<float> logits_;  // logits after fed_ (valid when !fed_.empty())
  std::function<bool()> interrupt_;
  // A request whose wait was interrupted while it was in a pass, and the sequence it completes.
  std::shared_ptr<DraftModel::Request> pending_;
  std::vector<int32_t> pending_sequence_;
  // fed_ becomes `sequence` with `logits` (the draft noise applied).
  void Take(std::span<const int32_t> sequence, std::vector<float> logits);
  uint64_t tokens_fed_ = 0;
};

}  // namespace pipeinfer::draft_server
