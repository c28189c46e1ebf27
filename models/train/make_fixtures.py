#!/usr/bin/env python3
"""Reference fixtures for the engine tests, computed by the training code from the *shipped* F16 GGUF weights.

For each model (read back from models/<file>-f16.gguf, computed in float32):
  <model>.prompt_ids.txt      prompt ids (BOS included), space separated, one line, trailing newline
  <model>.prompt_logits.f32   raw little-endian float32 [n_prompt][n_vocab], one batched forward over the prompt
  <model>.greedy_ids.txt      16 greedy ids: g0 = argmax(last prompt row); g_{s+1} = argmax(greedy row s)
  <model>.greedy_logits.f32   float32 [16][n_vocab]; row s = logits after feeding g_s at position n_prompt+s
  <model>.meta.txt            human-readable summary
plus prompt.txt (the prompt bytes, no trailing newline) and the tokenizer fixtures
  spm_sentences.txt           test sentences, one per line (UTF-8)
  spm_ids.txt                 `spm_encode --model=models/demo-tokenizer.model --output_format=id` of that file
                              (one line per sentence; SentencePiece adds the "▁" dummy prefix; no BOS)
"""
import argparse, os, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import use_openblas  # noqa: E402,F401
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Config, Llama                      # noqa: E402
import gguf_writer as G                              # noqa: E402
import data                                          # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..'))

PROMPT = 'It is a truth universally acknowledged, that a single man in possession of a good fortune'
N_GREEDY = 16

SENTENCES = [
    'Hello world',
    'It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.',
    '"My dear Mr. Bennet," said his lady to him one day, "have you heard that Netherfield Park is let at last?"',
    'Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition.',
    '  two leading spaces',
    'trailing spaces   ',
    'multiple     inner      spaces',
    ' ',
    '   ',
    '\tleading tab and\ttabs\tinside',
    'Numbers: 0 1 12 123 1234 3.14159 -42 1,000,000 and 2023-11-26',
    'Prices: £20,000 a year, $5, €3.50',
    'Punctuation!?... (parentheses) [brackets] {braces} <angle> "quotes" \'single\' --dashes-- ;:',
    'Café naïve façade coöperate résumé Zoë',
    'Ünïcödé ÀÉÎÕÜ ß ø å æ œ',
    '日本語のテキスト',
    '中文字符测试',
    '한국어 문장',
    'Emoji: 😀 🎉 👍🏽 ❤️ 🇬🇧',
    'Mixed: Mr. Darcy 😀 said 你好 to Elizabeth.',
    'Greek αβγ δέλτα and Cyrillic привет мир',
    'Math ∑ ∫ √ ≤ ≥ ≠ ∞ and arrows → ← ↔',
    'The ▁ character itself and ▁▁ twice',
    'CAPITALS and lowercase and MiXeD CaSe',
    'a',
    'supercalifragilisticexpialidocious antidisestablishmentarianism',
    'Zero-width\u200bspace and non-breaking\u00a0space',
]


def load_model(path):
    meta, tens = G.read_gguf(path)
    cfg = Config(n_vocab=len(meta['tokenizer.ggml.tokens']), n_ctx=meta['llama.context_length'],
                 n_embd=meta['llama.embedding_length'], n_layer=meta['llama.block_count'],
                 n_head=meta['llama.attention.head_count'], n_head_kv=meta['llama.attention.head_count_kv'],
                 n_ff=meta['llama.feed_forward_length'], rope_base=meta['llama.rope.freq_base'],
                 norm_eps=meta['llama.attention.layer_norm_rms_epsilon'], tie_embeddings=False)
    m = Llama(cfg)
    m.load_gguf_tensors({k: torch.from_numpy(np.array(v[2], dtype=np.float32)) for k, v in tens.items()})
    m.eval()
    return m, meta


@torch.no_grad()
def run(model, ids):
    x = torch.tensor([ids])
    prompt_logits = model(x)[0].float().numpy()
    seq = list(ids)
    g = int(np.argmax(prompt_logits[-1]))
    greedy_ids, rows = [], []
    for s in range(N_GREEDY):
        greedy_ids.append(g)
        seq.append(g)
        row = model(torch.tensor([seq]))[0, -1].float().numpy()
        rows.append(row)
        g = int(np.argmax(row))
    return prompt_logits, greedy_ids, np.stack(rows), g


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--models', nargs='+', default=['demo-target', 'demo-draft'])
    ap.add_argument('--out', default=os.path.join(ROOT, 'tests', 'fixtures', 'demo'))
    ap.add_argument('--model-dir', default=os.path.join(ROOT, 'models'))
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    sp = data.load_sp()
    ids = [sp.bos_id()] + sp.encode(PROMPT)
    with open(os.path.join(a.out, 'prompt.txt'), 'w', encoding='utf-8') as f:
        f.write(PROMPT)
    for name in a.models:
        path = os.path.join(a.model_dir, name + '-f16.gguf')
        model, meta = load_model(path)
        pl, gi, gl, nxt = run(model, ids)
        pre = os.path.join(a.out, name)
        with open(pre + '.prompt_ids.txt', 'w') as f:
            f.write(' '.join(map(str, ids)) + '\n')
        pl.astype('<f4').tofile(pre + '.prompt_logits.f32')
        with open(pre + '.greedy_ids.txt', 'w') as f:
            f.write(' '.join(map(str, gi)) + '\n')
        gl.astype('<f4').tofile(pre + '.greedy_logits.f32')
        last = pl[-1]
        p = np.exp(last - last.max())
        p /= p.sum()
        srt = np.sort(pl, axis=1)
        with open(pre + '.meta.txt', 'w', encoding='utf-8') as f:
            f.write('model: models/%s-f16.gguf (general.name %s)\n' % (name, meta['general.name']))
            f.write('computed by: models/train/make_fixtures.py (PyTorch float32 on the F16 weights read back '
                    'from the GGUF; exact F32 attention, no KV-cache rounding)\n')
            f.write('prompt: %r (tokenized with add_bos=true)\n' % PROMPT)
            f.write('n_prompt: %d  n_vocab: %d  n_greedy: %d\n' % (len(ids), pl.shape[1], N_GREEDY))
            f.write('prompt pieces: %s\n' % ' '.join(sp.id_to_piece(i) for i in ids))
            f.write('argmax per prompt row: %s\n' % ' '.join(str(int(i)) for i in pl.argmax(1)))
            f.write('min top1-top2 margin over prompt rows: %.4f\n' % float((srt[:, -1] - srt[:, -2]).min()))
            srt_g = np.sort(gl, axis=1)
            f.write('top1-top2 margin per greedy row: %s\n' % ' '.join('%.3f' % v for v in srt_g[:, -1] - srt_g[:, -2]))
            f.write('last prompt row: max %.4f rms %.4f top-1 prob %.4f\n'
                    % (last.max(), float(np.sqrt((last ** 2).mean())), p.max()))
            f.write('greedy text: %r\n' % sp.decode(gi))
            f.write('next_after_last_greedy_step: %d\n' % nxt)
        print(name, 'greedy:', sp.decode(gi))
    # tokenizer fixtures
    sent_path = os.path.join(a.out, 'spm_sentences.txt')
    with open(sent_path, 'w', encoding='utf-8') as f:
        for s in SENTENCES:
            assert '\n' not in s and s != ''
            f.write(s + '\n')
    out = subprocess.run(['spm_encode', '--model=' + os.path.join(ROOT, 'models', 'demo-tokenizer.model'),
                          '--output_format=id', '--input=' + sent_path], check=True, capture_output=True).stdout
    with open(os.path.join(a.out, 'spm_ids.txt'), 'wb') as f:
        f.write(out)
    # cross-check with the Python binding
    lines = out.decode().split('\n')
    for s, l in zip(SENTENCES, lines):
        assert [int(t) for t in l.split()] == sp.encode(s), s
    print('spm fixtures ok:', len(SENTENCES), 'sentences')


if __name__ == '__main__':
    main()
