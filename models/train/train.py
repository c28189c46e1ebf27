#!/usr/bin/env python3
"""Train one llama-architecture model on the Austen corpus (CPU, deterministic given seed + thread count).

Resumable: state is checkpointed to <workdir>/ckpt.pt every --ckpt-every steps; rerunning the same command
continues from the checkpoint.  To extend training, rerun with a larger --steps (the warmup-stable-decay schedule
is recomputed for the new total; this is exact as long as the cooldown of the earlier run had not started, see
lr_at).

Knowledge distillation: --teacher <ckpt.pt> trains on (1 - alpha) * CE(data) + alpha * T^2 * KL(teacher_T ||
student_T); the teacher is not part of the checkpoint, so a run can be resumed with another teacher
(--stop-after N ends a phase at step N without touching the schedule).

The shipped pair's commands are in reproduce.sh (GPU: --device cuda --amp, pre-tokenized --streams); a CPU
example, the earlier 6.0M target:
  nice -n 19 python3 models/train/train.py --name target --n-embd 256 --n-layer 6 --n-head 8 --n-head-kv 4 \
      --n-ff 704 --ctx 256 --batch 8 --steps N --lr 1.5e-3
"""
import argparse, contextlib, json, math, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import use_openblas  # noqa: E402,F401  (re-execs with OpenBLAS before torch is imported)

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Config, Llama                      # noqa: E402
import data                                          # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def get_args(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--name', required=True)
    ap.add_argument('--workdir', default=None, help='default: models/train/work/<name>')
    ap.add_argument('--corpus', default=os.path.join(HERE, 'work', 'corpus'))
    ap.add_argument('--extra', action='store_true', help='train on the prepare_extra.py chapters too')
    ap.add_argument('--streams', default=None, help='pre-tokenized streams (python3 data.py --out DIR) instead '
                    'of tokenizing --corpus')
    ap.add_argument('--tokenizer', default=os.path.join(HERE, '..', 'demo-tokenizer.model'))
    ap.add_argument('--n-embd', type=int, default=256)
    ap.add_argument('--n-layer', type=int, default=6)
    ap.add_argument('--n-head', type=int, default=8)
    ap.add_argument('--n-head-kv', type=int, default=4)
    ap.add_argument('--n-ff', type=int, default=704)
    ap.add_argument('--ctx', type=int, default=512)
    ap.add_argument('--tie', action='store_true', help='tie output head to token embedding')
    ap.add_argument('--batch', type=int, default=6)
    ap.add_argument('--steps', type=int, default=900)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--min-lr-frac', type=float, default=0.05)
    ap.add_argument('--decay-frac', type=float, default=0.2)
    ap.add_argument('--warmup', type=int, default=60)
    ap.add_argument('--wd', type=float, default=0.1)
    ap.add_argument('--clip', type=float, default=1.0)
    ap.add_argument('--seed', type=int, default=1234)
    ap.add_argument('--chat-every', type=int, default=3)
    ap.add_argument('--eval-every', type=int, default=100)
    ap.add_argument('--eval-windows', type=int, default=24, help='windows used for periodic evals')
    ap.add_argument('--ckpt-every', type=int, default=50)
    ap.add_argument('--teacher', default=None,
                    help='knowledge distillation: a train.py checkpoint (ckpt.pt) of the teacher model (same vocab)')
    ap.add_argument('--distill-alpha', type=float, default=0.9,
                    help='loss = (1 - alpha) * CE(data) + alpha * T^2 * KL(teacher_T || student_T)')
    ap.add_argument('--distill-temp', type=float, default=1.0, help='softmax temperature T for distillation')
    ap.add_argument('--stop-after', type=int, default=None,
                    help='checkpoint and exit once this step is reached (the LR schedule still uses --steps); '
                         'used to switch teachers mid-run')
    ap.add_argument('--threads', type=int, default=1,
                    help='torch threads (1 is fastest on a shared 2-core box; results depend on it)')
    ap.add_argument('--device', default='cpu', help='cpu or cuda')
    ap.add_argument('--amp', action='store_true', help='bfloat16 autocast (cuda only); weights stay float32')
    ap.add_argument('--dropout', type=float, default=0.0, help='dropout on embeddings and residual branches')
    ap.add_argument('--time-budget', type=float, default=None,
                    help='seconds of training: after --measure-steps the run shortens --steps to fit (the chosen '
                         'step count is logged as event "resized"; pass it as --steps to repeat the run)')
    ap.add_argument('--measure-steps', type=int, default=40)
    ap.add_argument('--keep-best', action='store_true',
                    help='evaluate on the whole validation set at each --eval-every and keep the best model in '
                         'best.pt (model only)')
    ap.add_argument('--synth', default=None,
                    help='distillation on teacher samples too: an .npy [N, L] of token rows (sample_teacher.py); '
                         'each step adds --synth-batch rows, loss weighted by rows')
    ap.add_argument('--synth-batch', type=int, default=0)
    return ap.parse_args(argv)


def lr_at(step, a):
    """Warmup-stable-decay: linear warmup, constant LR, then a linear cooldown over the last
    decay_frac * steps steps down to min_lr_frac * lr.  The stable phase does not depend on --steps, so a run
    started with a large --steps and resumed with a smaller one (before its cooldown begins) is bit-identical
    to a run started with the smaller --steps."""
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    d0 = a.steps - int(round(a.decay_frac * a.steps))
    if step < d0:
        return a.lr
    p = (step - d0 + 1) / max(1, a.steps - d0)
    return a.lr * (1.0 - (1.0 - a.min_lr_frac) * p)


def load_checkpoint(path, device='cpu'):
    return torch.load(path, map_location=device, weights_only=False)


def load_teacher(path, n_vocab, device='cpu'):
    st = load_checkpoint(path, device)
    tc = Config(**st['config'])
    assert tc.n_vocab == n_vocab, 'teacher has a different vocabulary'
    tc.dropout = 0.0
    t = Llama(tc).to(device)
    t.load_state_dict(st['model'])
    t.eval()
    for p in t.parameters():
        p.requires_grad_(False)
    return t, int(st['step'])


def distill_kl(student_logits, teacher_logits, temp):
    """Mean over positions of T^2 * KL(softmax(teacher/T) || softmax(student/T))."""
    lt = F.log_softmax(teacher_logits.float() / temp, dim=-1)
    ls = F.log_softmax(student_logits / temp, dim=-1)
    kl = (lt.exp() * (lt - ls)).sum(-1)
    return kl.mean() * (temp * temp)


def dev_of(model):
    return next(model.parameters()).device


@torch.no_grad()
def teacher_agreement(model, teacher, val_ids, ctx, max_windows, batch=8):
    """Fraction of positions of the first max_windows validation windows where the argmaxes agree."""
    model.eval()
    n = min((len(val_ids) - 1) // ctx, max_windows)
    agree, cnt = 0, 0
    for w0 in range(0, n, batch):
        x = torch.stack([torch.from_numpy(val_ids[w * ctx:w * ctx + ctx]) for w in range(w0, min(n, w0 + batch))])
        x = x.to(dev_of(model))
        agree += int((model(x).argmax(-1) == teacher(x).argmax(-1)).sum())
        cnt += x.numel()
    model.train()
    return agree / cnt


@torch.no_grad()
def evaluate(model, val_ids, ctx, max_windows=None, batch=8):
    """Sum of next-token NLL (nats) over non-overlapping windows, skipping BOS targets."""
    model.eval()
    n = (len(val_ids) - 1) // ctx
    if max_windows:
        n = min(n, max_windows)
    tot, cnt = 0.0, 0
    for w0 in range(0, n, batch):
        ws = range(w0, min(n, w0 + batch))
        x = torch.stack([torch.from_numpy(val_ids[w * ctx:w * ctx + ctx + 1]) for w in ws]).to(dev_of(model))
        logits = model(x[:, :-1]).float()
        tgt = x[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction='none')
        keep = (tgt.reshape(-1) != data.BOS)
        tot += nll[keep].double().sum().item()
        cnt += int(keep.sum())
    # the last partial window
    if not max_windows:
        rest = val_ids[n * ctx:]
        if len(rest) > 1:
            x = torch.from_numpy(rest)[None].to(dev_of(model))
            logits = model(x[:, :-1]).float()
            tgt = x[:, 1:]
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction='none')
            keep = (tgt.reshape(-1) != data.BOS)
            tot += nll[keep].double().sum().item()
            cnt += int(keep.sum())
    model.train()
    return tot, cnt


def main(argv=None):
    a = get_args(argv)
    torch.set_num_threads(a.threads)
    wd = a.workdir or os.path.join(HERE, 'work', a.name)
    os.makedirs(wd, exist_ok=True)
    logf = open(os.path.join(wd, 'log.jsonl'), 'a')

    def log(**kw):
        line = json.dumps(kw)
        print(line, flush=True)
        logf.write(line + '\n')
        logf.flush()

    sp = data.load_sp(a.tokenizer)
    if a.streams:
        train_ids, n_pairs, val_ids, val_bytes = data.load_streams(a.streams, a.seed, a.chat_every)
    else:
        train_ids, n_pairs = data.build_train_stream(sp, a.corpus, a.seed, a.chat_every, a.extra)
        val_ids, val_bytes = data.build_val_stream(sp, a.corpus)
    n_val_tok = int((val_ids != data.BOS).sum())
    cfg = Config(n_vocab=sp.get_piece_size(), n_ctx=a.ctx, n_embd=a.n_embd, n_layer=a.n_layer, n_head=a.n_head,
                 n_head_kv=a.n_head_kv, n_ff=a.n_ff, tie_embeddings=a.tie, dropout=a.dropout)
    torch.manual_seed(a.seed)
    model = Llama(cfg).to(a.device)
    dev = torch.device(a.device)
    amp = torch.autocast('cuda', dtype=torch.bfloat16) if a.amp else contextlib.nullcontext()
    synth = np.load(a.synth) if a.synth else None
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': a.wd}, {'params': no_decay, 'weight_decay': 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    teacher, teacher_step = None, None
    if a.teacher:
        teacher, teacher_step = load_teacher(a.teacher, cfg.n_vocab, a.device)
        log(event='teacher', path=a.teacher, teacher_step=teacher_step, teacher_params=teacher.n_params(),
            alpha=a.distill_alpha, temp=a.distill_temp)
    step, elapsed = 0, 0.0
    ck = os.path.join(wd, 'ckpt.pt')
    best_val = float('inf')
    if os.path.exists(ck):
        st = load_checkpoint(ck, a.device)
        assert {'dropout': 0.0, **st['config']} == cfg.to_dict(), 'checkpoint has a different model config'
        model.load_state_dict(st['model'])
        opt.load_state_dict(st['opt'])
        step, elapsed = st['step'], st['elapsed']
        best_val = st.get('best_val', best_val)
        if st['args'].get('steps_resized'):
            a.steps = st['args']['steps']
        log(event='resume', step=step, steps=a.steps)
    else:
        log(event='start', params=model.n_params(), config=cfg.to_dict(), args=vars(a),
            train_tokens=len(train_ids), chat_pairs=n_pairs, val_tokens=n_val_tok, val_bytes=val_bytes)

    def save():
        tmp = ck + '.tmp'
        torch.save({'model': model.state_dict(), 'opt': opt.state_dict(), 'step': step, 'elapsed': elapsed,
                    'config': cfg.to_dict(), 'args': vars(a), 'best_val': best_val}, tmp)
        os.replace(tmp, ck)

    def save_model(path, **extra):
        """Model only (for export and transfer): the state dict on the CPU, the config and the step."""
        tmp = path + '.tmp'
        torch.save({'model': {k: v.detach().cpu() for k, v in model.state_dict().items()}, 'step': step,
                    'elapsed': elapsed, 'config': cfg.to_dict(), 'args': vars(a), **extra}, tmp)
        os.replace(tmp, path)

    def batch_loss(x):
        """(loss, data cross-entropy) of one batch of token rows [B, T+1]."""
        with amp:
            logits = model(x[:, :-1]).float()
        ce = F.cross_entropy(logits.reshape(-1, cfg.n_vocab), x[:, 1:].reshape(-1))
        if teacher is None:
            return ce, ce
        with torch.no_grad(), amp:
            tlogits = teacher(x[:, :-1]).float()
        kl = distill_kl(logits.reshape(-1, cfg.n_vocab), tlogits.reshape(-1, cfg.n_vocab), a.distill_temp)
        return (1.0 - a.distill_alpha) * ce + a.distill_alpha * kl, ce

    model.train()
    t_last = time.time()
    loss_acc, n_acc, ce_acc = 0.0, 0, 0.0
    end = a.steps if a.stop_after is None else min(a.steps, a.stop_after)
    step0, t_measure = step, None
    while step < end:
        if a.time_budget and step == step0 + 10:
            t_measure = elapsed
        if a.time_budget and step == step0 + 10 + a.measure_steps:
            per_step = (elapsed - t_measure) / a.measure_steps
            fit = step + int((a.time_budget - elapsed) / per_step)
            d0 = a.steps - int(round(a.decay_frac * a.steps))
            if fit < a.steps and step < d0:
                a.steps = max(fit, step + 1)
                a.steps_resized = True
                end = a.steps if a.stop_after is None else min(a.steps, a.stop_after)
                log(event='resized', steps=a.steps, per_step_s=round(per_step, 4))
        lr = lr_at(step, a)
        for g in opt.param_groups:
            g['lr'] = lr
        rng = np.random.default_rng([a.seed, step])       # data order depends only on (seed, step)
        starts = rng.integers(0, len(train_ids) - a.ctx - 1, size=a.batch)
        x = torch.from_numpy(np.stack([train_ids[s:s + a.ctx + 1] for s in starts])).to(dev)
        loss, ce = batch_loss(x)
        if synth is not None and a.synth_batch:
            rows = rng.integers(0, len(synth), size=a.synth_batch)
            sloss, _ = batch_loss(torch.from_numpy(synth[rows]).to(dev))
            loss = (loss * a.batch + sloss * a.synth_batch) / (a.batch + a.synth_batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        step += 1
        loss_acc += loss.item()
        ce_acc += ce.item()
        n_acc += 1
        now = time.time()
        elapsed += now - t_last
        t_last = now
        if step % 10 == 0:
            extra = {'ce': round(ce_acc / n_acc, 4)} if teacher is not None else {}
            log(step=step, loss=round(loss_acc / n_acc, 4), **extra, lr=round(lr, 6), gnorm=round(float(gn), 3),
                elapsed=round(elapsed, 1), tok_per_s=round(step * a.batch * a.ctx / max(elapsed, 1e-9), 1))
            loss_acc, n_acc, ce_acc = 0.0, 0, 0.0
        if step % a.ckpt_every == 0 or step == end:
            save()
        if step % a.eval_every == 0 and step < a.steps:
            tot, cnt = evaluate(model, val_ids, a.ctx, None if a.keep_best else a.eval_windows)
            extra = {}
            if a.keep_best:
                extra['val_loss'] = round(tot / cnt, 4)
                if tot / cnt < best_val:
                    best_val = tot / cnt
                    save_model(os.path.join(wd, 'best.pt'), val_loss=best_val)
                    extra['best'] = True
            if teacher is not None:
                extra['teacher_agree_partial'] = round(teacher_agreement(model, teacher, val_ids, a.ctx,
                                                                         a.eval_windows), 4)
            if not a.keep_best:
                extra['val_loss_partial'] = round(tot / cnt, 4)
            log(step=step, **extra)
            t_last = time.time()            # do not count eval time as training time
    if step < a.steps:
        log(event='stopped', step=step, steps=a.steps)
        return
    # final full evaluation
    tot, cnt = evaluate(model, val_ids, a.ctx)
    vl = tot / cnt
    save_model(os.path.join(wd, 'model.pt'), val_loss=vl)
    bpb = tot / val_bytes / math.log(2)
    res = {'step': step, 'val_loss': vl, 'val_tokens': cnt, 'val_bytes': val_bytes, 'val_bpb': bpb,
           'train_seconds': elapsed, 'params': model.n_params(), 'config': cfg.to_dict(), 'args': vars(a),
           'train_tokens_seen': step * a.batch * a.ctx,
           'device': torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}
    if synth is not None and a.synth_batch:
        res['synth_rows_seen'] = step * a.synth_batch
        res['synth_row_tokens'] = int(synth.shape[1])
    if teacher is not None:
        res['teacher_step'] = teacher_step
        res['teacher_agreement'] = teacher_agreement(model, teacher, val_ids, a.ctx, 10 ** 9)
    with open(os.path.join(wd, 'result.json'), 'w') as f:
        json.dump(res, f, indent=1)
    log(event='done', val_loss=round(vl, 4), val_bpb=round(bpb, 4), elapsed=round(elapsed, 1))


if __name__ == '__main__':
    main()
