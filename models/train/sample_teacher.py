#!/usr/bin/env python3
"""Sample token rows from a trained model, as extra distillation data for the draft (train.py --synth).

Each row starts with --prompt-len tokens of a random window of the training stream and continues with
--gen-len tokens sampled from the model (full softmax at one of --temps, cycling over rows). The draft then
learns the target's distribution on text the target itself writes, which is what it has to predict during
speculative decoding. Writes an int64 .npy of shape [n_seq, prompt_len + gen_len].

Deterministic given --seed on the CPU; on a GPU the sampled rows can differ between runs (bf16 kernels).
"""
import argparse, contextlib, json, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import use_openblas  # noqa: E402,F401
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data                                          # noqa: E402
from train import load_teacher                       # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--teacher', required=True, help='train.py checkpoint (ckpt.pt, model.pt or best.pt)')
    ap.add_argument('--out', required=True)
    ap.add_argument('--corpus', default=os.path.join(HERE, 'work', 'corpus'))
    ap.add_argument('--streams', default=None, help='pre-tokenized streams (train.py --streams)')
    ap.add_argument('--tokenizer', default=os.path.join(HERE, '..', 'demo-tokenizer.model'))
    ap.add_argument('--n-seq', type=int, default=4096)
    ap.add_argument('--prompt-len', type=int, default=32)
    ap.add_argument('--gen-len', type=int, default=128)
    ap.add_argument('--temps', default='1.0,0.7')
    ap.add_argument('--batch', type=int, default=1024)
    ap.add_argument('--seed', type=int, default=4321)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--amp', action='store_true', help='bfloat16 autocast (cuda)')
    ap.add_argument('--threads', type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sp = data.load_sp(a.tokenizer)
    if a.streams:
        train_ids = data.load_streams(a.streams, 1234, 3)[0]
    else:
        train_ids, _ = data.build_train_stream(sp, a.corpus, 1234)
    model, step = load_teacher(a.teacher, sp.get_piece_size(), a.device)
    assert a.prompt_len + a.gen_len <= model.c.n_ctx
    temps = [float(t) for t in a.temps.split(',')]
    rng = np.random.default_rng(a.seed)
    starts = rng.integers(0, len(train_ids) - a.prompt_len, size=a.n_seq)
    rows = np.stack([train_ids[s:s + a.prompt_len] for s in starts])
    gen = torch.Generator(device=a.device)
    gen.manual_seed(a.seed)
    amp = torch.autocast('cuda', dtype=torch.bfloat16) if a.amp else contextlib.nullcontext()
    out = []
    t0 = time.time()
    with torch.no_grad():
        for b0 in range(0, a.n_seq, a.batch):
            x = torch.from_numpy(rows[b0:b0 + a.batch]).to(a.device)
            temp = torch.tensor([temps[(b0 + i) % len(temps)] for i in range(len(x))], device=a.device)
            for _ in range(a.gen_len):
                with amp:
                    lg = model(x)[:, -1].float()
                p = torch.softmax(lg / temp[:, None], dim=-1)
                nxt = torch.multinomial(p, 1, generator=gen)
                x = torch.cat([x, nxt], dim=1)
            out.append(x.cpu().numpy())
    arr = np.concatenate(out).astype(np.int64)
    np.save(a.out, arr)
    print(json.dumps({'event': 'sampled', 'rows': int(arr.shape[0]), 'row_tokens': int(arr.shape[1]),
                      'teacher': a.teacher, 'teacher_step': step, 'temps': temps,
                      'eos_fraction': float((arr[:, a.prompt_len:] == data.EOS).mean()),
                      'seconds': round(time.time() - t0, 1)}), flush=True)


if __name__ == '__main__':
    main()
