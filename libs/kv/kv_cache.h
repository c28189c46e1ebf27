// Paged, reference-counted KV cache of one stage (its own layers only), with per-session
// multibuffering: a canonical sequence (committed tokens) and any number of partitions, each
// holding one in-flight run on top of a shared prefix.
//
// Storage is a fixed pool of blocks of `block_tokens` slots. A slot holds the key and value rows of
// one token for every layer of the stage. Sequences are lists of blocks; forking shares blocks
// (reference counts) and a block shared by several sequences is copied before it is written
// (copy-on-write). Capacity is bounded: an operation that needs more blocks than are free fails
// with RESOURCE_EXHAUSTED and changes nothing.
//
// Slots and positions. Slot i of a sequence is its i-th stored token. Every slot has a parent slot
// (the previous token of its path); a linear sequence has parent(i) = i - 1, and a token tree (a
// speculative run with branches) has several slots sharing a parent. A slot's position is its
// depth (number of ancestors), and the keys a token may attend to are exactly its path: its
// ancestors and itself.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pipeinfer::kv {

enum class ElemType { kF16, kF32 };

struct KvConfig {
  int32_t n_layers = 0;   // layers held by this stage
  int32_t n_embd_kv = 0;  // width of one K (and one V) row
  ElemType type = ElemType::kF16;
  int32_t block_tokens = 16;    // slots per block
  int64_t capacity_tokens = 0;  // total slots; rounded up to whole blocks

  size_t elem_bytes() const { return type == ElemType::kF16 ? 2 : 4; }
  size_t row_bytes() const { return static_cast<size_t>(n_embd_kv) * elem_bytes(); }
  // Bytes of one block (all layers, K and V).
  size_t block_bytes() const { return 2u * n_layers * block_tokens * row_bytes(); }
  // Blocks of the pool: capacity_tokens rounded up to whole blocks.
  int64_t n_blocks() const {
    return capacity_tokens <= 0 ? 0 : (capacity_tokens + block_tokens - 1) / block_tokens;
  }
  // Capacity from a byte budget.
  static int64_t TokensForBytes(const KvConfig& c, uint64_t bytes);
};

using BlockId = int32_t;

// Where the bytes of the blocks live. The cache keeps the bookkeeping (sequences, reference
// counts, reservations) and asks its store to move bytes when it copies on write or rebuilds a
// sequence. Slot p of the store is block p / block_tokens, row p % block_tokens (a "physical
// slot"). The default store is host memory; a GPU backend supplies one in device memory.
class KvStore {
 public:
  virtual ~KvStore() = default;
  // Host address of the storage (block 0), or nullptr when it is not in host memory.
  virtual uint8_t* host_data() = 0;
  virtual void CopyBlock(BlockId dst, BlockId src) = 0;
  // Every layer's key and value rows of one physical slot.
  virtual void CopySlot(int64_t dst, int64_t src) = 0;
};

// Byte offset of the key row of physical slot `phys` of `layer` in a store (the value row follows
// block_tokens rows later).
size_t KeyOffset(const KvConfig& c, int64_t phys, int32_t layer);
size_t ValueOffset(const KvConfig& c, int64_t phys, int32_t layer);

// One sequence: blocks plus per-slot parents.
struct Sequence {
  std::vector<BlockId> blocks;
  std::vector<int32_t> parent;    // per slot; -1 for the first slot
  std::vector<int32_t> position;  // per slot: depth in its path

  int32_t size() const { return static_cast<int32_t>(parent.size()); }
  bool IsLinear() const;  // parent(i) == i - 1 for every slot
};

// Keys visible to one token: slots [0, linear_end) plus `extra` (ascending, all >= linear_end).
struct Visibility {
  int32_t linear_end = 0;
  std::vector<int32_t> extra;
};

struct KvStats {
  int64_t blocks_total = 0;
  int64_t blocks_used = 0;
  int64_t sessions = 0;
  int64_t sequences = 0;
  int64_t blocks_reserved = 0;       // sum of the open sessions' reservations
  int64_t reservation_overruns = 0;  // blocks ever allocated beyond a session's reservation
};

// The blocks a stage reserves for a session that asks for `tokens` token slots over canonical and
// at most `partitions` live partitions (stage.proto SessionOpen.kv_reserve_tokens): the slots
// rounded up to blocks, plus per partition the blocks that sharing cannot avoid (a copied partial
// block when it is written, a partial block it inherits, the rounding of its own slots), plus two
// for canonical (its partial last block and the copy a commit makes before it drops the old one).
int64_t ReservationBlocks(int64_t tokens, int64_t partitions, int32_t block_tokens);

class KvCache {
 public:
  static constexpr uint32_t kCanonical = 0;

  // `store` null: the blocks live in host memory.
  explicit KvCache(const KvConfig& config, std::unique_ptr<KvStore> store = nullptr);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const KvConfig& config() const { return config_; }

  // Opens a session, reserving `reserve_blocks` blocks for it (0 = none: it allocates from the
  // blocks nobody was promised). RESOURCE_EXHAUSTED when the reservation does not fit.
  absl::Status OpenSession(uint64_t session, int64_t reserve_blocks = 0);
  // Frees every sequence of the session.
  absl::Status CloseSession(uint64_t session);
  bool HasSession(uint64_t session) const;

  // Creates partition `part` holding the first `n_positions` tokens of a path of `src`: the path
  // ending at `src_leaf` (or, with src_leaf = -1, the path ending at src's last slot).
  absl::Status Fork(uint64_t session, uint32_t part, uint32_t src, int32_t src_leaf,
                    int32_t n_positions);

  // Appends one slot per token. parents[i] is the run-local index of token i's parent (< i) or -1:
  // a root, attached to anchors[i] when `anchors` is given and anchors[i] >= 0 (an existing slot:
  // a token tree grown over several runs), else to the sequence's last slot before this call (the
  // end of its prefix). Returns the new slots' indices; their positions are in the sequence.
  // Blocks are made private (copy on write) so the caller can write K/V into the new slots.
  absl::StatusOr<std::vector<int32_t>> Append(uint64_t session, uint32_t part,
                                              std::span<const int32_t> parents,
                                              std::span<const int32_t> anchors = {});

  // The canonical sequence becomes the first `n_positions` tokens of the path ending at `leaf` of
  // partition `part` (leaf = -1: its last slot). With part == kCanonical this truncates.
  absl::Status Commit(uint64_t session, uint32_t part, int32_t leaf, int32_t n_positions);

  // Drops a partition (never the canonical sequence).
  absl::Status Release(uint64_t session, uint32_t part);

  // Read access for the forward pass. nullptr when absent.
  const Sequence* Find(uint64_t session, uint32_t part) const;
  absl::StatusOr<const Sequence*> Get(uint64_t session, uint32_t part) const;

  // Path of `slot` (ancestors then slot), ascending.
  static std::vector<int32_t> PathOf(const Sequence& seq, int32_t slot);
  static Visibility VisibilityOf(const Sequence& seq, int32_t slot);

  // Physical slot (block * block_tokens + row) holding `slot` of `seq`.
  int64_t PhysicalSlot(const Sequence& seq, int32_t slot) const {
    return static_cast<int64_t>(seq.blocks[slot / config_.block_tokens]) * config_.block_tokens +
           slot % config_.block_tokens;
  }
  KvStore& store() { return *store_; }
  int64_t n_blocks() const { return n_blocks_; }

  // K/V row of `slot` of `layer` (layer is stage-local, 0-based). Element type per config. Only
  // for stores in host memory.
  uint8_t* KeyRow(const Sequence& seq, int32_t layer, int32_t slot);
  uint8_t* ValueRow(const Sequence& seq, int32_t layer, int32_t slot);
  const uint8_t* KeyRow(const Sequence& seq, int32_t layer, int32_t slot) const;
  const uint8_t* ValueRow(const Sequence& seq, int32_t layer, int32_t slot) const;

  KvStats Stats() const;
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  // Free blocks that no session was promised (what a new reservation can take).
  int64_t unpromised_blocks() const { return free_blocks() - promised_; }
  // Blocks the session owns now, and its reservation (0 for an unknown session).
  int64_t blocks_held(uint64_t session) const;
  int64_t blocks_reserved(uint64_t session) const;
  int32_t RefCount(BlockId b) const { return refs_[b]; }

  // Checks every internal invariant (reference counts equal the number of sequences holding each
  // block, free list disjoint from used blocks, slot metadata consistent). For tests.
  absl::Status CheckInvariants() const;

 private:
  using Session = std::map<uint32_t, Sequence>;
  struct Account {
    int64_t reserved = 0;  // blocks promised at open
    int64_t held = 0;      // blocks owned now
  };

  absl::StatusOr<Session*> GetSession(uint64_t session);
  // Blocks `session` may still allocate: what is left of its reservation plus unpromised blocks.
  int64_t Available(uint64_t session) const;
  absl::Status CheckAvailable(uint64_t session, int64_t need) const;
  BlockId Allocate(uint64_t session);
  void Ref(BlockId b) { ++refs_[b]; }
  void Unref(BlockId b);
  void Drop(Sequence& seq);
  void CopySlot(const Sequence& src, int32_t src_slot, Sequence& dst, int32_t dst_slot);
  // Makes the block holding `slot` private to `seq` (copy-on-write).
  void MakePrivate(uint64_t session, Sequence& seq, int32_t block_index);
  // Blocks Append() would allocate.
  int64_t BlocksNeededToGrow(const Sequence& seq, int32_t n_new) const;
  // Builds a linear sequence from `path` (slots of src), sharing src's blocks for the longest
  // prefix of the path that is stored contiguously from slot 0.
  absl::StatusOr<Sequence> BuildLinear(uint64_t session, const Sequence& src,
                                       std::span<const int32_t> path);

  KvConfig config_;
  int64_t n_blocks_ = 0;
  std::unique_ptr<KvStore> store_;
  std::vector<int32_t> refs_;
  std::vector<BlockId> free_;
  std::vector<uint64_t> owner_;  // per block: the session that allocated it
  std::map<uint64_t, Session> sessions_;
  std::map<uint64_t, Account> accounts_;
  int64_t promised_ = 0;  // sum over sessions of max(0, reserved - held)
  int64_t overruns_ = 0;
};

}  // namespace pipeinfer::kv
