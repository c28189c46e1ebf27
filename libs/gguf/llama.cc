#include "gguf/llama.h"

#include <cmath>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace pipeinfer::gguf {
namespace {

absl::StatusOr<uint32_t> GetU32(const GgufFile& f, const std::string& key) {
  PI_ASSIGN_OR_RETURN(uint64_t v, f.GetUint(key));
  if (v > UINT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.name(), ": metadata key '", key, "' = ", v, " is out of range"));
  }
  return static_cast<uint32_t>(v);
}

absl::StatusOr<uint32_t> GetU32Or(const GgufFile& f, const std::string& key, uint32_t def) {
  if (!f.Find(key)) return def;
  return GetU32(f, key);
}

absl::Status Bad(const GgufFile& f, const std::string& msg) {
  return absl::InvalidArgumentError(absl::StrCat(f.name(), ": ", msg));
}

}  // namespace

absl::StatusOr<LlamaHParams> LlamaHParams::FromGguf(const GgufFile& f) {
  LlamaHParams hp;
  PI_ASSIGN_OR_RETURN(hp.architecture, f.GetString("general.architecture"));
  if (hp.architecture != "llama") {
    return Bad(f, absl::StrCat("architecture '", hp.architecture,
                               "' is not supported (only 'llama' and its relatives)"));
  }
  if (const Value* v = f.Find("general.name"); v && v->AsString()) hp.name = *v->AsString();
  const std::string a = hp.architecture;
  PI_ASSIGN_OR_RETURN(hp.n_ctx_train, GetU32(f, a + ".context_length"));
  PI_ASSIGN_OR_RETURN(hp.n_embd, GetU32(f, a + ".embedding_length"));
  PI_ASSIGN_OR_RETURN(hp.n_layer, GetU32(f, a + ".block_count"));
  PI_ASSIGN_OR_RETURN(hp.n_ff, GetU32(f, a + ".feed_forward_length"));
  PI_ASSIGN_OR_RETURN(hp.n_head, GetU32(f, a + ".attention.head_count"));
  PI_ASSIGN_OR_RETURN(hp.n_head_kv, GetU32Or(f, a + ".attention.head_count_kv", hp.n_head));
  if (hp.n_embd == 0 || hp.n_layer == 0 || hp.n_ff == 0 || hp.n_head == 0 || hp.n_head_kv == 0 ||
      hp.n_ctx_train == 0) {
    return Bad(f,
               "embedding_length, block_count, feed_forward_length, head counts and "
               "context_length must all be positive");
  }
  if (hp.n_embd % hp.n_head != 0) {
    return Bad(f, absl::StrCat("embedding_length ", hp.n_embd, " is not divisible by head_count ",
                               hp.n_head));
  }
  if (hp.n_head % hp.n_head_kv != 0) {
    return Bad(f, absl::StrCat("head_count ", hp.n_head, " is not a multiple of head_count_kv ",
                               hp.n_head_kv));
  }
  PI_ASSIGN_OR_RETURN(hp.n_rot, GetU32Or(f, a + ".rope.dimension_count", hp.n_embd / hp.n_head));
  if (hp.n_rot != hp.head_dim() || hp.n_rot % 2 != 0) {
    return Bad(f, absl::StrCat("rope.dimension_count ", hp.n_rot,
                               " must be even and equal the head size ", hp.head_dim()));
  }
  PI_ASSIGN_OR_RETURN(double base, f.GetFloatOr(a + ".rope.freq_base", 10000.0));
  PI_ASSIGN_OR_RETURN(double scale, f.GetFloatOr(a + ".rope.scale_linear", 1.0));
  if (!(base > 0) || !(scale > 0))
    return Bad(f, "rope.freq_base and rope.scale_linear must be > 0");
  hp.rope_freq_base = static_cast<float>(base);
  hp.rope_freq_scale = static_cast<float>(1.0 / scale);
  PI_ASSIGN_OR_RETURN(double eps, f.GetFloat(a + ".attention.layer_norm_rms_epsilon"));
  if (!(eps > 0)) return Bad(f, "attention.layer_norm_rms_epsilon must be > 0");
  hp.rms_norm_eps = static_cast<float>(eps);
  if (f.Find("general.file_type")) {
    PI_ASSIGN_OR_RETURN(hp.file_type, f.GetInt("general.file_type"));
  }
  PI_ASSIGN_OR_RETURN(const ArrayValue* tokens, f.GetArray("tokenizer.ggml.tokens"));
  if (tokens->size == 0 || tokens->size > INT32_MAX) {
    return Bad(f, absl::StrCat("tokenizer.ggml.tokens has ", tokens->size, " entries"));
  }
  hp.n_vocab = static_cast<uint32_t>(tokens->size);
  return hp;
}

absl::StatusOr<TokenizerMetadata> TokenizerMetadata::FromGguf(const GgufFile& f) {
  TokenizerMetadata t;
  PI_ASSIGN_OR_RETURN(t.model, f.GetString("tokenizer.ggml.model"));
  PI_ASSIGN_OR_RETURN(t.tokens, f.GetStringArray("tokenizer.ggml.tokens"));
  const size_t n = t.tokens.size();
  if (n == 0) return Bad(f, "tokenizer.ggml.tokens is empty");
  if (f.Find("tokenizer.ggml.scores")) {
    PI_ASSIGN_OR_RETURN(t.scores, f.GetFloatArray("tokenizer.ggml.scores"));
    if (t.scores.size() != n) {
      return Bad(f, absl::StrCat("tokenizer.ggml.scores has ", t.scores.size(), " entries for ", n,
                                 " tokens"));
    }
  }
  if (f.Find("tokenizer.ggml.token_type")) {
    PI_ASSIGN_OR_RETURN(auto types, f.GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() != n) {
      return Bad(f, absl::StrCat("tokenizer.ggml.token_type has ", types.size(), " entries for ", n,
                                 " tokens"));
    }
    t.token_types.reserve(n);
    for (int64_t ty : types) t.token_types.push_back(static_cast<TokenType>(ty));
  }
  if (t.model == "llama") {
    t.bos_id = 1;
    t.eos_id = 2;
    t.unk_id = 0;
  } else if (t.model == "gpt2") {
    t.bos_id = 11;
    t.eos_id = 11;
    if (f.Find("tokenizer.ggml.merges")) {
      PI_ASSIGN_OR_RETURN(t.merges, f.GetStringArray("tokenizer.ggml.merges"));
    }
  } else {
    return Bad(f, absl::StrCat("tokenizer model '", t.model, "' is not supported (llama, gpt2)"));
  }
  struct IdKey {
    const char* key;
    int32_t* out;
  };
  for (IdKey k : {IdKey{"tokenizer.ggml.bos_token_id", &t.bos_id},
                  IdKey{"tokenizer.ggml.eos_token_id", &t.eos_id},
                  IdKey{"tokenizer.ggml.unknown_token_id", &t.unk_id},
                  IdKey{"tokenizer.ggml.padding_token_id", &t.pad_id}}) {
    if (!f.Find(k.key)) continue;
    PI_ASSIGN_OR_RETURN(uint64_t id, f.GetUint(k.key));
    if (id >= n) {
      return Bad(f, absl::StrCat(k.key, " = ", id, " is outside the vocabulary of ", n));
    }
    *k.out = static_cast<int32_t>(id);
  }
  PI_ASSIGN_OR_RETURN(t.add_bos, f.GetBoolOr("tokenizer.ggml.add_bos_token", t.model == "llama"));
  PI_ASSIGN_OR_RETURN(t.add_eos, f.GetBoolOr("tokenizer.ggml.add_eos_token", false));
  if (f.Find("tokenizer.chat_template")) {
    PI_ASSIGN_OR_RETURN(std::string tmpl, f.GetString("tokenizer.chat_template"));
    t.chat_template = std::move(tmpl);
  }
  return t;
}

std::vector<const TensorInfo*> StageTensors::all() const {
  std::vector<const TensorInfo*> out;
  if (token_embd) out.push_back(token_embd);
  for (const auto& l : layers) {
    for (const TensorInfo* t : l.all()) out.push_back(t);
  }
  if (output_norm) out.push_back(output_norm);
  if (output && output != token_embd) out.push_back(output);
  return out;
}

uint64_t StageTensors::total_bytes() const {
  uint64_t total = 0;
  for (const TensorInfo* t : all()) total += t->n_bytes;
  return total;
}

namespace {

absl::StatusOr<const TensorInfo*> Expect(const GgufFile& f, const std::string& name,
                                         std::vector<uint64_t> shape) {
  PI_ASSIGN_OR_RETURN(const TensorInfo* t, f.GetTensor(name));
  if (t->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(f.name(), ": tensor '", name, "' has shape ",
                                                   t->ShapeString(), ", expected [",
                                                   absl::StrJoin(shape, ", "), "]"));
  }
  return t;
}

}  // namespace

absl::StatusOr<StageTensors> SelectStageTensors(const GgufFile& f, const LlamaHParams& hp,
                                                const StageSpec& spec) {
  if (spec.first_layer >= spec.last_layer || spec.last_layer > hp.n_layer) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer range [", spec.first_layer, ", ", spec.last_layer,
                     ") is invalid for a model with ", hp.n_layer, " layers"));
  }
  StageTensors st;
  st.first_layer = spec.first_layer;
  st.last_layer = spec.last_layer;
  const uint64_t e = hp.n_embd, kv = hp.n_embd_kv(), ff = hp.n_ff, v = hp.n_vocab;
  if (spec.embedding) {
    PI_ASSIGN_OR_RETURN(st.token_embd, Expect(f, "token_embd.weight", {e, v}));
  }
  for (uint32_t i = spec.first_layer; i < spec.last_layer; ++i) {
    const std::string p = absl::StrCat("blk.", i, ".");
    LayerTensors l;
    PI_ASSIGN_OR_RETURN(l.attn_norm, Expect(f, p + "attn_norm.weight", {e}));
    PI_ASSIGN_OR_RETURN(l.wq, Expect(f, p + "attn_q.weight", {e, e}));
    PI_ASSIGN_OR_RETURN(l.wk, Expect(f, p + "attn_k.weight", {e, kv}));
    PI_ASSIGN_OR_RETURN(l.wv, Expect(f, p + "attn_v.weight", {e, kv}));
    PI_ASSIGN_OR_RETURN(l.wo, Expect(f, p + "attn_output.weight", {e, e}));
    PI_ASSIGN_OR_RETURN(l.ffn_norm, Expect(f, p + "ffn_norm.weight", {e}));
    PI_ASSIGN_OR_RETURN(l.w_gate, Expect(f, p + "ffn_gate.weight", {e, ff}));
    PI_ASSIGN_OR_RETURN(l.w_up, Expect(f, p + "ffn_up.weight", {e, ff}));
    PI_ASSIGN_OR_RETURN(l.w_down, Expect(f, p + "ffn_down.weight", {ff, e}));
    st.layers.push_back(l);
  }
  if (spec.head) {
    PI_ASSIGN_OR_RETURN(st.output_norm, Expect(f, "output_norm.weight", {e}));
    if (f.FindTensor("output.weight")) {
      PI_ASSIGN_OR_RETURN(st.output, Expect(f, "output.weight", {e, v}));
    } else {
      // Tied embeddings: the head reuses token_embd.
      PI_ASSIGN_OR_RETURN(st.output, Expect(f, "token_embd.weight", {e, v}));
    }
  }
  return st;
}

uint64_t PrefaultStage(const GgufFile& f, const StageTensors& st) {
  uint64_t sum = 0;
  for (const TensorInfo* t : st.all()) {
    f.Prefetch(*t);
    for (uint64_t off = 0; off < t->n_bytes; off += 4096) sum = sum * 31 + t->data[off];
    if (t->n_bytes > 0) sum += t->data[t->n_bytes - 1];
  }
  return sum;
}

absl::StatusOr<std::vector<StageSpec>> SplitLayers(uint32_t n_layer, uint32_t n_stages,
                                                   const std::vector<double>& weights) {
  if (n_stages == 0 || n_stages > n_layer) {
    return absl::InvalidArgumentError(absl::StrCat("cannot split ", n_layer, " layers into ",
                                                   n_stages, " stages (each needs a layer)"));
  }
  std::vector<double> w = weights;
  if (w.empty()) w.assign(n_stages, 1.0);
  if (w.size() != n_stages) {
    return absl::InvalidArgumentError(
        absl::StrCat(w.size(), " layer weights given for ", n_stages, " stages"));
  }
  double total = 0;
  for (double x : w) {
    if (!(x > 0) || !std::isfinite(x)) {
      return absl::InvalidArgumentError("layer weights must be positive and finite");
    }
    total += x;
  }
  std::vector<StageSpec> out(n_stages);
  double cum = 0;
  uint32_t prev = 0;
  for (uint32_t i = 0; i < n_stages; ++i) {
    cum += w[i];
    uint32_t end = (i + 1 == n_stages)
                       ? n_layer
                       : static_cast<uint32_t>(std::floor(n_layer * cum / total + 1e-9));
    end = std::max(end, prev + 1);
    end = std::min(end, n_layer - (n_stages - 1 - i));
    out[i] = StageSpec{prev, end, i == 0, i + 1 == n_stages};
    prev = end;
  }
  return out;
}

}  // namespace pipeinfer::gguf
