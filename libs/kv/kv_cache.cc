#include "kv/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace pipeinfer::kv {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

absl::Status NoSession(uint64_t s) {
  return absl::NotFoundError(absl::StrCat("KV: session ", s, " is not open"));
}

absl::Status NoPartition(uint64_t s, uint32_t p) {
  return absl::NotFoundError(absl::StrCat("KV: session ", s, " has no partition ", p));
}

}  // namespace

int64_t ReservationBlocks(int64_t tokens, int64_t partitions, int32_t block_tokens) {
  if (tokens <= 0) return 0;
  return CeilDiv(tokens, block_tokens) + 4 * std::max<int64_t>(partitions, 0) + 2;
}

int64_t KvConfig::TokensForBytes(const KvConfig& c, uint64_t bytes) {
  const size_t per_block = c.block_bytes();
  if (per_block == 0) return 0;
  return static_cast<int64_t>(bytes / per_block) * c.block_tokens;
}

bool Sequence::IsLinear() const {
  for (int32_t i = 0; i < size(); ++i) {
    if (parent[i] != i - 1) return false;
  }
  return true;
}

size_t KeyOffset(const KvConfig& c, int64_t phys, int32_t layer) {
  const size_t layer_bytes = 2u * c.block_tokens * c.row_bytes();
  return static_cast<size_t>(phys / c.block_tokens) * c.block_bytes() + layer * layer_bytes +
         static_cast<size_t>(phys % c.block_tokens) * c.row_bytes();
}

size_t ValueOffset(const KvConfig& c, int64_t phys, int32_t layer) {
  return KeyOffset(c, phys, layer) + c.block_tokens * c.row_bytes();
}

namespace {

// The default store: one host allocation.
class HostKvStore final : public KvStore {
 public:
  HostKvStore(const KvConfig& c, int64_t n_blocks)
      : c_(c), data_(std::make_unique_for_overwrite<uint8_t[]>(n_blocks * c.block_bytes())) {}
  uint8_t* host_data() override { return data_.get(); }
  void CopyBlock(BlockId dst, BlockId src) override {
    std::memcpy(data_.get() + static_cast<size_t>(dst) * c_.block_bytes(),
                data_.get() + static_cast<size_t>(src) * c_.block_bytes(), c_.block_bytes());
  }
  void CopySlot(int64_t dst, int64_t src) override {
    for (int32_t l = 0; l < c_.n_layers; ++l) {
      std::memcpy(data_.get() + KeyOffset(c_, dst, l), data_.get() + KeyOffset(c_, src, l),
                  c_.row_bytes());
      std::memcpy(data_.get() + ValueOffset(c_, dst, l), data_.get() + ValueOffset(c_, src, l),
                  c_.row_bytes());
    }
  }

 private:
  KvConfig c_;
  std::unique_ptr<uint8_t[]> data_;
};

}  // namespace

KvCache::KvCache(const KvConfig& config, std::unique_ptr<KvStore> store)
    : config_(config), store_(std::move(store)) {
  n_blocks_ = config_.n_blocks();
  if (!store_) store_ = std::make_unique<HostKvStore>(config_, n_blocks_);
  refs_.assign(n_blocks_, 0);
  owner_.assign(n_blocks_, 0);
  free_.reserve(n_blocks_);
  for (int64_t b = n_blocks_ - 1; b >= 0; --b) free_.push_back(static_cast<BlockId>(b));
}

KvCache::~KvCache() = default;

int64_t KvCache::Available(uint64_t session) const {
  auto it = accounts_.find(session);
  const int64_t own =
      it == accounts_.end() ? 0 : std::max<int64_t>(0, it->second.reserved - it->second.held);
  return own + unpromised_blocks();
}

absl::Status KvCache::CheckAvailable(uint64_t session, int64_t need) const {
  if (need <= Available(session)) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "KV cache full: need ", need, " free blocks, have ", Available(session), " for session ",
      session, " (", free_blocks(), " free, ", promised_, " promised to reservations)"));
}

BlockId KvCache::Allocate(uint64_t session) {
  BlockId b = free_.back();
  free_.pop_back();
  refs_[b] = 1;
  owner_[b] = session;
  Account& a = accounts_[session];
  if (a.held < a.reserved) {
    --promised_;  // taken from its own reservation
  } else if (a.reserved > 0) {
    ++overruns_;
  }
  ++a.held;
  return b;
}

void KvCache::Unref(BlockId b) {
  if (--refs_[b] != 0) return;
  free_.push_back(b);
  Account& a = accounts_[owner_[b]];
  --a.held;
  if (a.held < a.reserved) ++promised_;  // back into its reservation
}

int64_t KvCache::blocks_held(uint64_t session) const {
  auto it = accounts_.find(session);
  return it == accounts_.end() ? 0 : it->second.held;
}

int64_t KvCache::blocks_reserved(uint64_t session) const {
  auto it = accounts_.find(session);
  return it == accounts_.end() ? 0 : it->second.reserved;
}

void KvCache::Drop(Sequence& seq) {
  for (BlockId b : seq.blocks) Unref(b);
  seq.blocks.clear();
  seq.parent.clear();
  seq.position.clear();
}

uint8_t* KvCache::KeyRow(const Sequence& seq, int32_t layer, int32_t slot) {
  return store_->host_data() + KeyOffset(config_, PhysicalSlot(seq, slot), layer);
}

uint8_t* KvCache::ValueRow(const Sequence& seq, int32_t layer, int32_t slot) {
  return KeyRow(seq, layer, slot) + config_.block_tokens * config_.row_bytes();
}

const uint8_t* KvCache::KeyRow(const Sequence& seq, int32_t layer, int32_t slot) const {
  return const_cast<KvCache*>(this)->KeyRow(seq, layer, slot);
}

const uint8_t* KvCache::ValueRow(const Sequence& seq, int32_t layer, int32_t slot) const {
  return const_cast<KvCache*>(this)->ValueRow(seq, layer, slot);
}

void KvCache::CopySlot(const Sequence& src, int32_t src_slot, Sequence& dst, int32_t dst_slot) {
  store_->CopySlot(PhysicalSlot(dst, dst_slot), PhysicalSlot(src, src_slot));
}

void KvCache::MakePrivate(uint64_t session, Sequence& seq, int32_t block_index) {
  const BlockId old = seq.blocks[block_index];
  if (refs_[old] <= 1) return;
  const BlockId fresh = Allocate(session);
  store_->CopyBlock(fresh, old);
  Unref(old);
  seq.blocks[block_index] = fresh;
}

int64_t KvCache::BlocksNeededToGrow(const Sequence& seq, int32_t n_new) const {
  const int32_t bt = config_.block_tokens;
  const int64_t have = static_cast<int64_t>(seq.blocks.size());
  int64_t need = CeilDiv(seq.size() + n_new, bt) - have;
  // The partially filled last block is written to: copy it first if it is shared.
  if (n_new > 0 && seq.size() % bt != 0 && refs_[seq.blocks.back()] > 1) ++need;
  return std::max<int64_t>(need, 0);
}

absl::Status KvCache::OpenSession(uint64_t session, int64_t reserve_blocks) {
  if (sessions_.count(session)) {
    return absl::AlreadyExistsError(absl::StrCat("KV: session ", session, " is already open"));
  }
  reserve_blocks = std::max<int64_t>(reserve_blocks, 0);
  if (reserve_blocks > unpromised_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: cannot reserve ", reserve_blocks, " blocks for session ", session, " (",
        unpromised_blocks(), " of ", n_blocks_, " blocks are neither used nor reserved)"));
  }
  sessions_[session][kCanonical] = Sequence{};
  accounts_[session] = Account{reserve_blocks, 0};
  promised_ += reserve_blocks;
  return absl::OkStatus();
}

absl::Status KvCache::CloseSession(uint64_t session) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return NoSession(session);
  for (auto& [part, seq] : it->second) Drop(seq);
  sessions_.erase(it);
  auto a = accounts_.find(session);
  if (a != accounts_.end()) {
    promised_ -= std::max<int64_t>(0, a->second.reserved - a->second.held);
    accounts_.erase(a);
  }
  return absl::OkStatus();
}

bool KvCache::HasSession(uint64_t session) const { return sessions_.count(session) > 0; }

absl::StatusOr<KvCache::Session*> KvCache::GetSession(uint64_t session) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return NoSession(session);
  return &it->second;
}

const Sequence* KvCache::Find(uint64_t session, uint32_t part) const {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return nullptr;
  auto p = it->second.find(part);
  return p == it->second.end() ? nullptr : &p->second;
}

absl::StatusOr<const Sequence*> KvCache::Get(uint64_t session, uint32_t part) const {
  if (!HasSession(session)) return NoSession(session);
  const Sequence* s = Find(session, part);
  if (!s) return NoPartition(session, part);
  return s;
}

std::vector<int32_t> KvCache::PathOf(const Sequence& seq, int32_t slot) {
  std::vector<int32_t> path;
  for (int32_t s = slot; s >= 0; s = seq.parent[s]) path.push_back(s);
  std::reverse(path.begin(), path.end());
  return path;
}

Visibility KvCache::VisibilityOf(const Sequence& seq, int32_t slot) {
  Visibility v;
  std::vector<int32_t> path = PathOf(seq, slot);
  int32_t k = 0;
  while (k < static_cast<int32_t>(path.size()) && path[k] == k) ++k;
  v.linear_end = k;
  v.extra.assign(path.begin() + k, path.end());
  return v;
}

absl::StatusOr<Sequence> KvCache::BuildLinear(uint64_t session, const Sequence& src,
                                              std::span<const int32_t> path) {
  const int32_t bt = config_.block_tokens;
  const int32_t n = static_cast<int32_t>(path.size());
  int32_t k = 0;  // path[0..k) == 0..k-1: stored contiguously, shareable
  while (k < n && path[k] == k) ++k;
  // Blocks: share ceil(k/bt) of src's; the rest are new (plus a copy of a shared partial block).
  int64_t need = 0;
  if (n > k) need = CeilDiv(n, bt) - k / bt;
  PI_RETURN_IF_ERROR(CheckAvailable(session, need));
  Sequence out;
  for (int32_t b = 0; b < CeilDiv(k, bt); ++b) {
    out.blocks.push_back(src.blocks[b]);
    Ref(src.blocks[b]);
  }
  for (int32_t i = 0; i < n; ++i) {
    out.parent.push_back(i - 1);
    out.position.push_back(i);
  }
  for (int32_t i = k; i < n; ++i) {
    const int32_t bi = i / bt;
    if (bi >= static_cast<int32_t>(out.blocks.size())) {
      out.blocks.push_back(Allocate(session));
    } else {
      MakePrivate(session, out, bi);
    }
    CopySlot(src, path[i], out, i);
  }
  return out;
}

absl::Status KvCache::Fork(uint64_t session, uint32_t part, uint32_t src, int32_t src_leaf,
                           int32_t n_positions) {
  PI_ASSIGN_OR_RETURN(Session * s, GetSession(session));
  if (part == kCanonical) {
    return absl::InvalidArgumentError("KV: cannot fork into the canonical sequence");
  }
  if (s->count(part)) {
    return absl::AlreadyExistsError(
        absl::StrCat("KV: session ", session, " already has partition ", part));
  }
  auto it = s->find(src);
  if (it == s->end()) return NoPartition(session, src);
  const Sequence& from = it->second;
  const int32_t leaf = src_leaf < 0 ? from.size() - 1 : src_leaf;
  if (leaf >= from.size()) {
    return absl::OutOfRangeError(absl::StrCat("KV: fork leaf slot ", leaf, " beyond partition ",
                                              src, " of size ", from.size()));
  }
  std::vector<int32_t> path = leaf >= 0 ? PathOf(from, leaf) : std::vector<int32_t>{};
  if (n_positions < 0 || n_positions > static_cast<int32_t>(path.size())) {
    return absl::OutOfRangeError(
        absl::StrCat("KV: fork of ", n_positions, " positions from a path of ", path.size()));
  }
  path.resize(n_positions);
  PI_ASSIGN_OR_RETURN(Sequence seq, BuildLinear(session, from, path));
  (*s)[part] = std::move(seq);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> KvCache::Append(uint64_t session, uint32_t part,
                                                     std::span<const int32_t> parents,
                                                     std::span<const int32_t> anchors) {
  PI_ASSIGN_OR_RETURN(Session * s, GetSession(session));
  auto it = s->find(part);
  if (it == s->end()) return NoPartition(session, part);
  Sequence& seq = it->second;
  const int32_t n = static_cast<int32_t>(parents.size());
  if (!anchors.empty() && anchors.size() != parents.size()) {
    return absl::InvalidArgumentError("KV: anchors must have one entry per token");
  }
  for (int32_t i = 0; i < n; ++i) {
    if (parents[i] < -1 || parents[i] >= i) {
      return absl::InvalidArgumentError(absl::StrCat("KV: token ", i, " has parent ", parents[i],
                                                     " (must be -1 or an earlier token)"));
    }
    if (parents[i] < 0 && !anchors.empty() && (anchors[i] < -1 || anchors[i] >= seq.size())) {
      return absl::InvalidArgumentError(absl::StrCat("KV: token ", i, " hangs off slot ",
                                                     anchors[i], " of a sequence of ", seq.size()));
    }
  }
  PI_RETURN_IF_ERROR(CheckAvailable(session, BlocksNeededToGrow(seq, n)));
  const int32_t bt = config_.block_tokens;
  const int32_t base = seq.size();
  if (n > 0 && base % bt != 0) MakePrivate(session, seq, base / bt);
  std::vector<int32_t> slots(n);
  for (int32_t i = 0; i < n; ++i) {
    const int32_t slot = base + i;
    if (slot / bt >= static_cast<int32_t>(seq.blocks.size())) {
      seq.blocks.push_back(Allocate(session));
    }
    int32_t parent = parents[i] < 0 ? base - 1 : base + parents[i];
    if (parents[i] < 0 && !anchors.empty() && anchors[i] >= 0) parent = anchors[i];
    seq.parent.push_back(parent);
    seq.position.push_back(parent < 0 ? 0 : seq.position[parent] + 1);
    slots[i] = slot;
  }
  return slots;
}

absl::Status KvCache::Commit(uint64_t session, uint32_t part, int32_t leaf, int32_t n_positions) {
  PI_ASSIGN_OR_RETURN(Session * s, GetSession(session));
  auto it = s->find(part);
  if (it == s->end()) return NoPartition(session, part);
  const Sequence& from = it->second;
  const int32_t l = leaf < 0 ? from.size() - 1 : leaf;
  if (l >= from.size()) {
    return absl::OutOfRangeError(absl::StrCat("KV: commit leaf slot ", l, " beyond partition ",
                                              part, " of size ", from.size()));
  }
  std::vector<int32_t> path = l >= 0 ? PathOf(from, l) : std::vector<int32_t>{};
  if (n_positions < 0 || n_positions > static_cast<int32_t>(path.size())) {
    return absl::OutOfRangeError(
        absl::StrCat("KV: commit of ", n_positions, " positions from a path of ", path.size()));
  }
  path.resize(n_positions);
  PI_ASSIGN_OR_RETURN(Sequence seq, BuildLinear(session, from, path));
  Sequence& canonical = (*s)[kCanonical];
  Drop(canonical);
  canonical = std::move(seq);
  return absl::OkStatus();
}

absl::Status KvCache::Release(uint64_t session, uint32_t part) {
  PI_ASSIGN_OR_RETURN(Session * s, GetSession(session));
  if (part == kCanonical) {
    return absl::InvalidArgumentError("KV: the canonical sequence cannot be released");
  }
  auto it = s->find(part);
  if (it == s->end()) return NoPartition(session, part);
  Drop(it->second);
  s->erase(it);
  return absl::OkStatus();
}

KvStats KvCache::Stats() const {
  KvStats st;
  st.blocks_total = n_blocks_;
  st.blocks_used = n_blocks_ - free_blocks();
  st.sessions = static_cast<int64_t>(sessions_.size());
  for (const auto& [id, s] : sessions_) st.sequences += static_cast<int64_t>(s.size());
  for (const auto& [id, a] : accounts_) st.blocks_reserved += a.reserved;
  st.reservation_overruns = overruns_;
  return st;
}

absl::Status KvCache::CheckInvariants() const {
  std::vector<int32_t> counted(n_blocks_, 0);
  for (const auto& [sid, s] : sessions_) {
    if (!s.count(kCanonical)) return absl::InternalError("session without canonical sequence");
    for (const auto& [part, seq] : s) {
      if (seq.parent.size() != seq.position.size()) return absl::InternalError("slot metadata");
      if (static_cast<int64_t>(seq.blocks.size()) != CeilDiv(seq.size(), config_.block_tokens)) {
        return absl::InternalError(absl::StrCat("session ", sid, " partition ", part, ": ",
                                                seq.blocks.size(), " blocks for ", seq.size(),
                                                " slots"));
      }
      for (int32_t i = 0; i < seq.size(); ++i) {
        const int32_t p = seq.parent[i];
        if (p >= i || p < -1) return absl::InternalError("parent after child");
        if (seq.position[i] != (p < 0 ? 0 : seq.position[p] + 1)) {
          return absl::InternalError("position is not the depth");
        }
      }
      if (part == kCanonical && !seq.IsLinear()) {
        return absl::InternalError("canonical sequence is not linear");
      }
      for (BlockId b : seq.blocks) {
        if (b < 0 || b >= n_blocks_) return absl::InternalError("block id out of range");
        ++counted[b];
      }
    }
  }
  std::map<uint64_t, int64_t> held;
  for (int64_t b = 0; b < n_blocks_; ++b) {
    if (refs_[b] > 0) ++held[owner_[b]];
  }
  int64_t promised = 0;
  for (const auto& [sid, a] : accounts_) {
    if (!sessions_.count(sid)) return absl::InternalError("account of a closed session");
    if (held[sid] != a.held) {
      return absl::InternalError(absl::StrCat("session ", sid, " holds ", held[sid],
                                              " blocks but its account says ", a.held));
    }
    promised += std::max<int64_t>(0, a.reserved - a.held);
  }
  if (promised != promised_) return absl::InternalError("promised blocks miscounted");
  if (promised_ > free_blocks()) return absl::InternalError("more blocks promised than free");
  std::set<BlockId> free_set(free_.begin(), free_.end());
  if (free_set.size() != free_.size()) return absl::InternalError("block freed twice");
  for (int64_t b = 0; b < n_blocks_; ++b) {
    if (counted[b] != refs_[b]) {
      return absl::InternalError(
          absl::StrCat("block ", b, " has refcount ", refs_[b], " but ", counted[b], " holders"));
    }
    if ((refs_[b] == 0) != (free_set.count(static_cast<BlockId>(b)) == 1)) {
      return absl::InternalError(absl::StrCat("block ", b, " free-list mismatch"));
    }
  }
  return absl::OkStatus();
}

}  // namespace pipeinfer::kv
