#!/usr/bin/env python3
"""Export a trained checkpoint as GGUF (F16 and Q8_0) with llama.cpp-compatible metadata.

  python3 models/train/export.py --name target --out-prefix models/demo-target
writes models/demo-target-f16.gguf and models/demo-target-q8_0.gguf.
"""
import argparse, json, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import use_openblas  # noqa: E402,F401
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Config, Llama                      # noqa: E402
import gguf_writer as G                              # noqa: E402
import data                                          # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# Llama-2 style template: "<s>[INST] {user} [/INST] {assistant}</s><s>[INST] ..." (BOS/EOS are the control
# tokens, added by the tokenizer / generation, not text).  A system message, if any, is prepended to the first
# user turn inside the usual <<SYS>> block.  Router name: "llama2".
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% set system_message = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = '' %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if loop.index0 == 0 %}{% set content = system_message + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content + eos_token }}{% endif %}"
    "{% endfor %}")

ROLE_TEXT = {
    'target': 'target (large) model of the PipeInfer demo draft/target pair',
    'draft': 'draft (small) model of the PipeInfer demo draft/target pair',
}


def token_types(sp):
    types = []
    for i in range(sp.get_piece_size()):
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.is_unused(i):
            types.append(5)
        else:
            types.append(1)
    return types


def build(model, cfg, sp, name, description, ftype):
    w = G.GGUFWriter()
    w.add_string('general.architecture', 'llama')
    w.add_string('general.name', name)
    w.add_string('general.description', description)
    w.add_string('general.license', 'training text: public domain (Project Gutenberg / Debian); weights: same license '
                 'as PipeInfer Cluster')
    w.add_u32('general.file_type', {'f16': 1, 'q8_0': 7}[ftype])
    w.add_u32('llama.context_length', cfg.n_ctx)
    w.add_u32('llama.embedding_length', cfg.n_embd)
    w.add_u32('llama.block_count', cfg.n_layer)
    w.add_u32('llama.feed_forward_length', cfg.n_ff)
    w.add_u32('llama.attention.head_count', cfg.n_head)
    w.add_u32('llama.attention.head_count_kv', cfg.n_head_kv)
    w.add_u32('llama.rope.dimension_count', cfg.head_dim)
    w.add_f32('llama.rope.freq_base', cfg.rope_base)
    w.add_f32('llama.attention.layer_norm_rms_epsilon', cfg.norm_eps)
    w.add_string('tokenizer.ggml.model', 'llama')
    n = sp.get_piece_size()
    w.add_array('tokenizer.ggml.tokens', G.T_STRING, [sp.id_to_piece(i) for i in range(n)])
    w.add_array('tokenizer.ggml.scores', G.T_FLOAT32, [sp.get_score(i) for i in range(n)])
    w.add_array('tokenizer.ggml.token_type', G.T_INT32, token_types(sp))
    w.add_u32('tokenizer.ggml.bos_token_id', sp.bos_id())
    w.add_u32('tokenizer.ggml.eos_token_id', sp.eos_id())
    w.add_u32('tokenizer.ggml.unknown_token_id', sp.unk_id())
    w.add_bool('tokenizer.ggml.add_bos_token', True)
    w.add_bool('tokenizer.ggml.add_eos_token', False)
    w.add_string('tokenizer.chat_template', CHAT_TEMPLATE)
    for tname, p in model.gguf_tensors():
        a = p.detach().float().numpy()
        if a.ndim == 1:
            w.add_tensor(tname, a, G.GGML_F32)
        else:
            w.add_tensor(tname, a, G.GGML_F16 if ftype == 'f16' else G.GGML_Q8_0)
    return w


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--name', required=True, help='run name under models/train/work/')
    ap.add_argument('--out-prefix', required=True)
    ap.add_argument('--gguf-name', default=None)
    ap.add_argument('--role', default=None, choices=sorted(ROLE_TEXT), help='default: --name')
    ap.add_argument('--workdir', default=None, help='default: models/train/work/<name>')
    ap.add_argument('--ckpt', default=None, help='default: <workdir>/ckpt.pt (model.pt from a GPU run works too); '
                    'result.json is read from the same folder')
    ap.add_argument('--tokenizer', default=os.path.join(HERE, '..', 'demo-tokenizer.model'))
    a = ap.parse_args()
    wd = a.workdir or os.path.join(HERE, 'work', a.name)
    ck = a.ckpt or os.path.join(wd, 'ckpt.pt')
    st = torch.load(ck, map_location='cpu', weights_only=False)
    res = json.load(open(os.path.join(os.path.dirname(ck), 'result.json')))
    cfg = Config(**st['config'])
    cfg.dropout = 0.0
    model = Llama(cfg)
    model.load_state_dict(st['model'])
    sp = data.load_sp(a.tokenizer)
    assert sp.get_piece_size() == cfg.n_vocab
    role = a.role or a.name
    extra = res['args'].get('extra', False)
    if res['args'].get('streams'):
        with open(os.path.join(HERE, '..', '..', res['args']['streams'], 'meta.json')) as f:
            extra = json.load(f).get('extra', False)
    text = 'the six novels of Jane Austen (Debian r-cran-janeaustenr)'
    if extra:
        text += (', the King James Bible (Debian bible-kjv-text) and Herman Melville\'s Moby Dick (Debian '
                 'r-cran-tokenizers)')
    how = 'pseudo-chat pairs built from consecutive Austen dialogue paragraphs'
    if res['args'].get('teacher'):
        how += (', distilled from the target model (loss = %g * cross-entropy + %g * KL(target || draft) at '
                'temperature %g)' % (1 - res['args']['distill_alpha'], res['args']['distill_alpha'],
                                     res['args']['distill_temp']))
        if res.get('synth_rows_seen'):
            how += ', also on text sampled from the target'
    device = res.get('device', 'cpu')
    desc = ('%s. Llama architecture, %d parameters (n_embd %d, %d layers, %d heads / %d kv heads, n_ff %d, '
            'context %d), SentencePiece BPE vocabulary of %d pieces. Trained from scratch with PyTorch on %s '
            'for %d steps (%d tokens, %.0f s) on %s (public domain), plus %s. Validation (17 held-out Austen '
            'chapters): %.4f nats/token, %.4f bits/byte. Chat template: Llama-2 style "[INST] {user} [/INST]".'
            % (ROLE_TEXT.get(role, role), res['params'], cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_head_kv,
               cfg.n_ff, cfg.n_ctx, cfg.n_vocab, 'CPU' if device == 'cpu' else 'one ' + device + ' GPU',
               res['step'], res['train_tokens_seen'], res['train_seconds'], text, how, res['val_loss'],
               res['val_bpb']))
    for ftype in ('f16', 'q8_0'):
        path = '%s-%s.gguf' % (a.out_prefix, ftype)
        gname = (a.gguf_name or os.path.basename(a.out_prefix)) + '-' + ftype
        build(model, cfg, sp, gname, desc, ftype).write(path)
        # self-check: read back and compare with the checkpoint
        meta, tens = G.read_gguf(path)
        for tname, p in model.gguf_tensors():
            ref = p.detach().float().numpy()
            got = tens[tname][2]
            err = np.abs(got - ref).max()
            tol = 0 if ref.ndim == 1 else (1e-3 * np.abs(ref).max() if ftype == 'f16' else np.abs(ref).max() / 100)
            assert got.shape == ref.shape and err <= tol, (tname, err, tol)
        print('wrote %s (%d bytes)' % (path, os.path.getsize(path)))


if __name__ == '__main__':
    main()
