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

TensorDims LlamaHParams::dims() const {
  TensorDims d;
  d.embd = n_embd;
  d.vocab = n_vocab;
  d.ff = n_ff;
  d.q = n_embd_q();
  d.kv = n_embd_kv();
  d.head_dim = n_embd_head;
  d.rope_half = n_rot / 2;
  return d;
}

namespace {

// rope.freq_base, rope.scale_linear and the rope.scaling.* keys.
absl::Status ReadRope(const GgufFile& f, const std::string& a, LlamaHParams* hp) {
  PI_ASSIGN_OR_RETURN(double base, f.GetFloatOr(a + ".rope.freq_base", 10000.0));
  PI_ASSIGN_OR_RETURN(double scale, f.GetFloatOr(a + ".rope.scale_linear", 1.0));
  if (!(base > 0) || !(scale > 0))
    return Bad(f, "rope.freq_base and rope.scale_linear must be > 0");
  hp->rope_freq_base = static_cast<float>(base);
  hp->rope_freq_scale = static_cast<float>(1.0 / scale);
  hp->rope_scaling = scale != 1.0 ? RopeScaling::kLinear : RopeScaling::kNone;
  const std::string type_key = a + ".rope.scaling.type";
  if (!f.Find(type_key)) return absl::OkStatus();
  PI_ASSIGN_OR_RETURN(std::string type, f.GetString(type_key));
  if (type == "none") return absl::OkStatus();
  PI_ASSIGN_OR_RETURN(double factor, f.GetFloatOr(a + ".rope.scaling.factor", 1.0));
  if (!(factor > 0)) return Bad(f, absl::StrCat(a, ".rope.scaling.factor must be > 0"));
  hp->rope_scaling_factor = static_cast<float>(factor);
  if (type == "linear") {
    hp->rope_scaling = RopeScaling::kLinear;
    hp->rope_freq_scale = static_cast<float>(1.0 / factor);
    return absl::OkStatus();
  }
  if (type == "llama3") {
    hp->rope_scaling = RopeScaling::kLlama3;
    PI_ASSIGN_OR_RETURN(double lo, f.GetFloatOr(a + ".rope.scaling.low_freq_factor", 1.0));
    PI_ASSIGN_OR_RETURN(double hi, f.GetFloatOr(a + ".rope.scaling.high_freq_factor", 4.0));
    PI_ASSIGN_OR_RETURN(hp->rope_orig_ctx, GetU32(f, a + ".rope.scaling.original_context_length"));
    if (!(lo > 0) || !(hi > lo) || hp->rope_orig_ctx == 0) {
      return Bad(f, absl::StrCat("llama3 rope scaling needs 0 < low_freq_factor < "
                                 "high_freq_factor and original_context_length > 0 (got ",
                                 lo, ", ", hi, ", ", hp->rope_orig_ctx, ")"));
    }
    hp->rope_low_freq_factor = static_cast<float>(lo);
    hp->rope_high_freq_factor = static_cast<float>(hi);
    return absl::OkStatus();
  }
  return Bad(f, absl::StrCat(type_key, " = '", type, "' is not supported (none, linear, llama3)"));
}

}  // namespace

absl::StatusOr<LlamaHParams> LlamaHParams::FromGguf(const GgufFile& f) {
  LlamaHParams hp;
  PI_ASSIGN_OR_RETURN(hp.architecture, f.GetString("general.architecture"));
  const ArchDef* def = FindArchitecture(hp.architecture);
  if (def == nullptr) {
    return Bad(f, absl::StrCat("architecture '", hp.architecture, "' is not supported (only ",
                               SupportedArchitectureNames(), ")"));
  }
  hp.arch = def->arch;
  hp.rope_style = def->rope;
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
  if (hp.n_head % hp.n_head_kv != 0) {
    return Bad(f, absl::StrCat("head_count ", hp.n_head, " is not a multiple of head_count_kv ",
                               hp.n_head_kv));
  }
  const std::string key_len = a + ".attention.key_length";
  if (f.Find(key_len)) {
    PI_ASSIGN_OR_RETURN(hp.n_embd_head, GetU32(f, key_len));
    PI_ASSIGN_OR_RETURN(uint32_t v_len, GetU32Or(f, a + ".attention.value_length", hp.n_embd_head));
    if (v_len != hp.n_embd_head) {
      return Bad(
          f, absl::StrCat("attention.value_length ", v_len, " differs from attention.key_length ",
                          hp.n_embd_head, " (not supported)"));
    }
  } else {
    if (hp.n_embd % hp.n_head != 0) {
      return Bad(f, absl::StrCat("embedding_length ", hp.n_embd, " is not divisible by head_count ",
                                 hp.n_head));
    }
    hp.n_embd_head = hp.n_embd / hp.n_head;
  }
  if (hp.n_embd_head == 0 || hp.n_embd_head > 1024) {
    return Bad(f, absl::StrCat("head size ", hp.n_embd_head, " is out of range (1..1024)"));
  }
  PI_ASSIGN_OR_RETURN(hp.n_rot, GetU32Or(f, a + ".rope.dimension_count", hp.n_embd_head));
  if (hp.n_rot != hp.head_dim() || hp.n_rot % 2 != 0) {
    return Bad(f, absl::StrCat("rope.dimension_count ", hp.n_rot,
                               " must be even and equal the head size ", hp.head_dim()));
  }
  PI_RETURN_IF_ERROR(ReadRope(f, a, &hp));
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
    if (f.Find("tokenizer.ggml.pre")) {
      PI_ASSIGN_OR_RETURN(t.pre, f.GetString("tokenizer.ggml.pre"));
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
  t.add_bos_in_file = f.Find("tokenizer.ggml.add_bos_token") != nullptr;
  PI_ASSIGN_OR_RETURN(t.add_eos, f.GetBoolOr("tokenizer.ggml.add_eos_token", false));
  if (f.Find("tokenizer.chat_template")) {
    PI_ASSIGN_OR_RETURN(std::string tmpl, f.GetString("tokenizer.chat_template"));
    t.chat_template = std::move(tmpl);
  }
  return t;
}

std::vector<const TensorInfo*> LayerTensors::all() const {
  std::vector<const TensorInfo*> out;
  for (const TensorInfo* t :
       {attn_norm, wq, wk, wv, bq, bk, bv, q_norm, k_norm, wo, ffn_norm, w_gate, w_up, w_down}) {
    if (t) out.push_back(t);
  }
  return out;
}

std::vector<const TensorInfo*> StageTensors::all() const {
  std::vector<const TensorInfo*> out;
  if (token_embd) out.push_back(token_embd);
  if (rope_freqs) out.push_back(rope_freqs);
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

std::string ShapeText(const std::vector<uint64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// The layer of a "blk.N.rest" name and its rest; false for other names.
bool SplitLayerName(const std::string& name, uint32_t* layer, std::string* rest) {
  if (name.rfind("blk.", 0) != 0) return false;
  const size_t dot = name.find('.', 4);
  if (dot == std::string::npos || dot == 4) return false;
  uint64_t n = 0;
  for (size_t i = 4; i < dot; ++i) {
    if (name[i] < '0' || name[i] > '9' || n > UINT32_MAX / 10) return false;
    n = n * 10 + static_cast<uint64_t>(name[i] - '0');
  }
  *layer = static_cast<uint32_t>(n);
  *rest = name.substr(dot + 1);
  return true;
}

}  // namespace

absl::Status ValidateTensors(const GgufFile& f, const LlamaHParams& hp) {
  const ArchDef& def = ArchitectureOf(hp.arch);
  const TensorDims dims = hp.dims();
  auto dims_text = [&] {
    return absl::StrCat("n_embd ", dims.embd, ", n_vocab ", dims.vocab, ", n_ff ", dims.ff,
                        ", n_head ", hp.n_head, ", n_head_kv ", hp.n_head_kv, ", head_dim ",
                        dims.head_dim);
  };
  // Every tensor of the file must be one of the architecture's, with its shape.
  for (const TensorInfo& t : f.tensors()) {
    uint32_t layer = 0;
    std::string rest;
    const bool in_layer = SplitLayerName(t.name, &layer, &rest);
    const TensorDef* match = nullptr;
    for (const TensorDef& d : def.tensors) {
      if (d.per_layer == in_layer && (in_layer ? rest == d.name : t.name == d.name)) match = &d;
    }
    if (match == nullptr || (in_layer && layer >= hp.n_layer)) {
      return Bad(f, absl::StrCat("unexpected tensor '", t.name, "': architecture '", def.name,
                                 "' with ", hp.n_layer, " layers has no such tensor"));
    }
    const std::vector<uint64_t> want = ResolveShape(*match, dims);
    if (t.shape != want) {
      return Bad(f, absl::StrCat("tensor '", t.name, "' has shape ", t.ShapeString(), ", expected ",
                                 ShapeText(want), " (", dims_text(), ")"));
    }
  }
  // And every required tensor must be there.
  for (const TensorDef& d : def.tensors) {
    if (!d.required) continue;
    const uint32_t n = d.per_layer ? hp.n_layer : 1;
    for (uint32_t i = 0; i < n; ++i) {
      const std::string name = TensorName(d, i);
      if (!f.FindTensor(name)) {
        return absl::NotFoundError(absl::StrCat(f.name(), ": tensor '", name,
                                                "' not found (architecture '", def.name,
                                                "' requires it)"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<StageTensors> SelectStageTensors(const GgufFile& f, const LlamaHParams& hp,
                                                const StageSpec& spec) {
  if (spec.first_layer >= spec.last_layer || spec.last_layer > hp.n_layer) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer range [", spec.first_layer, ", ", spec.last_layer,
                     ") is invalid for a model with ", hp.n_layer, " layers"));
  }
  PI_RETURN_IF_ERROR(ValidateTensors(f, hp));
  // Shapes are checked above; here only presence matters.
  auto get = [&](const std::string& name) { return f.FindTensor(name); };
  StageTensors st;
  st.first_layer = spec.first_layer;
  st.last_layer = spec.last_layer;
  if (spec.embedding) st.token_embd = get("token_embd.weight");
  st.rope_freqs = get("rope_freqs.weight");
  for (uint32_t i = spec.first_layer; i < spec.last_layer; ++i) {
    const std::string p = absl::StrCat("blk.", i, ".");
    LayerTensors l;
    l.attn_norm = get(p + "attn_norm.weight");
    l.wq = get(p + "attn_q.weight");
    l.wk = get(p + "attn_k.weight");
    l.wv = get(p + "attn_v.weight");
    l.bq = get(p + "attn_q.bias");
    l.bk = get(p + "attn_k.bias");
    l.bv = get(p + "attn_v.bias");
    l.q_norm = get(p + "attn_q_norm.weight");
    l.k_norm = get(p + "attn_k_norm.weight");
    l.wo = get(p + "attn_output.weight");
    l.ffn_norm = get(p + "ffn_norm.weight");
    l.w_gate = get(p + "ffn_gate.weight");
    l.w_up = get(p + "ffn_up.weight");
    l.w_down = get(p + "ffn_down.weight");
    if (!l.bq != !l.bk || !l.bq != !l.bv) {
      return Bad(f, absl::StrCat("block ", i, " has only some of attn_q/k/v.bias"));
    }
    st.layers.push_back(l);
  }
  if (spec.head) {
    st.output_norm = get("output_norm.weight");
    st.output = get("output.weight");
    // Tied embeddings: the head reuses token_embd (which this stage then reads too).
    if (st.output == nullptr) st.output = get("token_embd.weight");
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
