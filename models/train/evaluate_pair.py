#!/usr/bin/env python3
"""Draft/target statistics and samples for the model card, computed from the shipped F16 GGUF files.

  * validation loss / bits per byte of each model (held-out chapters, windows of the model's context);
  * teacher-forced greedy agreement: fraction of validation positions where argmax(draft) == argmax(target);
  * speculative acceptance under greedy decoding: the target generates greedy continuations of validation
    prompts; at every position we check whether the draft's argmax (same prefix) equals the target's token.
    With draft_max = K, a speculation round starting at position i accepts the longest run of matches (<= K)
    and then emits one target token, so tokens per target verification = accepted + 1;
  * greedy and sampled outputs for a few prompts.
Writes a JSON report (default models/train/work/pair_eval.json) and prints a markdown summary.
"""
import argparse, json, math, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import use_openblas  # noqa: E402,F401
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data                                          # noqa: E402
from make_fixtures import load_model                 # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..'))

PROMPTS = [
    'It is a truth universally acknowledged, that a single man in possession of a good fortune',
    'Elizabeth could not help',
    '"My dear Emma," said Mr. Knightley,',
    'The Miss Dashwoods',
    'In the morning',
]
CHAT_PROMPTS = ['Who is Mr. Darcy?', 'How do you do today?', 'Tell me about the ball at Netherfield.']


@torch.no_grad()
def val_stats(model, val_ids, val_bytes, ctx):
    n = (len(val_ids) - 1) // ctx
    tot, cnt, preds = 0.0, 0, []
    for w in range(n):
        x = torch.from_numpy(val_ids[w * ctx:w * ctx + ctx + 1])[None]
        lg = model(x[:, :-1])[0]
        tgt = x[0, 1:]
        nll = torch.nn.functional.cross_entropy(lg, tgt, reduction='none')
        keep = tgt != data.BOS
        tot += nll[keep].double().sum().item()
        cnt += int(keep.sum())
        preds.append(lg.argmax(-1).numpy())
    return tot / cnt, tot / val_bytes / math.log(2), np.concatenate(preds), n * ctx


@torch.no_grad()
def generate(model, ids, n, temp=0.0, top_p=1.0, gen=None, stop_eos=True):
    seq = list(ids)
    for _ in range(n):
        lg = model(torch.tensor([seq[-model.c.n_ctx:]]))[0, -1].double()
        if temp == 0:
            t = int(lg.argmax())
        else:
            p = torch.softmax(lg / temp, -1)
            sp_, si = torch.sort(p, descending=True)
            c = torch.cumsum(sp_, 0)
            k = int((c < top_p).sum()) + 1
            q = sp_[:k] / sp_[:k].sum()
            t = int(si[torch.multinomial(q.float(), 1, generator=gen)])
        seq.append(t)
        if stop_eos and t == data.EOS:
            break
    return seq[len(ids):]


@torch.no_grad()
def acceptance(target, draft, prompts_ids, n_gen, kmax=(1, 2, 3, 4, 6, 8)):
    match = []
    for ids in prompts_ids:
        cont = generate(target, ids, n_gen, stop_eos=False)
        seq = torch.tensor([list(ids) + cont])
        dl = draft(seq)[0].argmax(-1).numpy()        # draft argmax after each prefix
        tl = target(seq)[0].argmax(-1).numpy()
        p0 = len(ids) - 1
        m = (dl[p0:p0 + n_gen] == np.array(cont)).astype(int)
        assert (tl[p0:p0 + n_gen] == np.array(cont)).all()
        match.append(m)
    res = {}
    for K in kmax:
        rounds, emitted, drafted, acc = 0, 0, 0, 0
        for m in match:
            i = 0
            while i < len(m):
                a = 0
                while a < K and i + a < len(m) and m[i + a]:
                    a += 1
                rounds += 1
                drafted += K
                acc += a
                emitted += a + 1
                i += a + 1
        res[K] = {'tokens_per_target_pass': emitted / rounds, 'mean_accepted': acc / rounds,
                  'draft_acceptance_rate': acc / drafted}
    return float(np.concatenate(match).mean()), res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--target', default=os.path.join(ROOT, 'models', 'demo-target-f16.gguf'))
    ap.add_argument('--draft', default=os.path.join(ROOT, 'models', 'demo-draft-f16.gguf'))
    ap.add_argument('--out', default=os.path.join(HERE, 'work', 'pair_eval.json'))
    ap.add_argument('--n-accept-prompts', type=int, default=24)
    ap.add_argument('--n-gen', type=int, default=64)
    ap.add_argument('--seed', type=int, default=7)
    ap.add_argument('--threads', type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sp = data.load_sp()
    tgt, tmeta = load_model(a.target)
    drf, dmeta = load_model(a.draft)
    val_ids, val_bytes = data.build_val_stream(sp, os.path.join(HERE, 'work', 'corpus'))
    ctx = min(tgt.c.n_ctx, drf.c.n_ctx)
    rep = {}
    tl, tb, tp, n = val_stats(tgt, val_ids, val_bytes, ctx)
    dl, db, dp, _ = val_stats(drf, val_ids, val_bytes, ctx)
    tgt_ids = np.concatenate([val_ids[w * ctx + 1:w * ctx + ctx + 1] for w in range(n // ctx)])
    rep['val'] = {'target': {'loss': tl, 'bpb': tb, 'top1_acc': float((tp == tgt_ids).mean())},
                  'draft': {'loss': dl, 'bpb': db, 'top1_acc': float((dp == tgt_ids).mean())},
                  'note': 'windows of %d tokens, not overlapping; bytes = all validation bytes' % ctx}
    rep['teacher_forced_argmax_agreement'] = float((tp == dp).mean())
    # the held-out chapters of the extra text (prepare_extra.py), and all held-out text together
    extra_path = os.path.join(HERE, 'work', 'corpus', 'extra_val_docs.jsonl')
    if os.path.exists(extra_path):
        ex_ids, ex_bytes = data.build_val_stream(sp, os.path.join(HERE, 'work', 'corpus'), 'extra_val_docs.jsonl')
        etl, etb, etp, en = val_stats(tgt, ex_ids, ex_bytes, ctx)
        edl, edb, edp, _ = val_stats(drf, ex_ids, ex_bytes, ctx)
        rep['val_extra'] = {'target': {'loss': etl, 'bpb': etb}, 'draft': {'loss': edl, 'bpb': edb},
                            'teacher_forced_argmax_agreement': float((etp == edp).mean()),
                            'note': 'King James Bible and Moby Dick held-out chapters'}
        both = val_bytes + ex_bytes
        rep['val_all'] = {'target_bpb': (tb * val_bytes + etb * ex_bytes) / both,
                          'draft_bpb': (db * val_bytes + edb * ex_bytes) / both,
                          'note': 'every held-out chapter (Austen, King James Bible, Moby Dick), bits per byte'}
    # acceptance: prompts = 48-token slices of validation text starting at BOS-free positions
    rng = np.random.default_rng(a.seed)
    starts = rng.integers(0, len(val_ids) - 200, size=a.n_accept_prompts)
    prompts_ids = [[data.BOS] + [int(t) for t in val_ids[s:s + 48] if t != data.BOS] for s in starts]
    m, acc = acceptance(tgt, drf, prompts_ids, a.n_gen)
    rep['greedy_trajectory_agreement'] = m
    rep['acceptance'] = acc
    # samples
    g = torch.Generator().manual_seed(a.seed)
    samples = []
    for p in PROMPTS:
        ids = [data.BOS] + sp.encode(p)
        samples.append({'prompt': p,
                        'target_greedy': sp.decode(generate(tgt, ids, 48)),
                        'draft_greedy': sp.decode(generate(drf, ids, 48)),
                        'target_sampled_t0.8_p0.95': sp.decode(generate(tgt, ids, 48, 0.8, 0.95, g))})
    for p in CHAT_PROMPTS:
        ids = [data.BOS] + sp.encode('[INST] %s [/INST]' % p)
        samples.append({'chat_user': p,
                        'target_greedy': sp.decode(generate(tgt, ids, 64)),
                        'target_sampled_t0.8_p0.95': sp.decode(generate(tgt, ids, 64, 0.8, 0.95, g))})
    rep['samples'] = samples
    with open(a.out, 'w') as f:
        json.dump(rep, f, indent=1, ensure_ascii=False)
    print(json.dumps({k: v for k, v in rep.items() if k != 'samples'}, indent=1))
    for s in samples:
        print(json.dumps(s, ensure_ascii=False, indent=1))


if __name__ == '__main__':
    main()
