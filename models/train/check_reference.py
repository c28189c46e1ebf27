#!/usr/bin/env python3
"""Self-checks of the training/export code against llama.cpp reference data in tests/fixtures
(if present): the PyTorch model run on the fixture "tiny" GGUF models reproduces llama.cpp's logits, and our
Q8_0 quantizer reproduces the bytes of llama.cpp's `quantize` output."""
import os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import use_openblas  # noqa: E402,F401
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import load_model                 # noqa: E402
import gguf_writer as G                              # noqa: E402

F = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), '../../tests/fixtures/')


def main():
    torch.set_num_threads(1)
    for v, ref in [('f32', 'tiny-f32-kvf32'), ('f16', 'tiny-f16-deq'), ('q8_0', 'tiny-q8_0-deq')]:
        m, _ = load_model(F + 'models/tiny-%s.gguf' % v)
        ids = [int(t) for t in open(F + 'refs/%s.p1.prompt_ids.txt' % ref).read().split()]
        g = [int(t) for t in open(F + 'refs/%s.p1.greedy_ids.txt' % ref).read().split()]
        r = np.fromfile(F + 'refs/%s.p1.prompt_logits.f32' % ref, dtype='<f4').reshape(len(ids), -1)
        rg = np.fromfile(F + 'refs/%s.p1.greedy_logits.f32' % ref, dtype='<f4').reshape(len(g), -1)
        with torch.no_grad():
            lg = m(torch.tensor([ids + g]))[0].numpy()
        dp = np.abs(lg[:len(ids)] - r).max()
        dg = np.abs(lg[len(ids):] - rg).max()
        ok = dp < 0.02 and dg < 0.02 and (lg[len(ids) - 1:-1].argmax(1) == np.array(g)).all()
        print('%-5s vs %-15s prompt max|d| %.4f  greedy max|d| %.4f  %s' % (v, ref, dp, dg, 'OK' if ok else 'FAIL'))
        assert ok
    # Q8_0 bytes
    _, t32 = G.read_gguf(F + 'models/tiny-f32.gguf')
    buf = open(F + 'models/tiny-q8_0.gguf', 'rb').read()
    _, tq = G.read_gguf(F + 'models/tiny-q8_0.gguf')
    n_same = 0
    for name, (ne, t, a) in t32.items():
        if a.ndim < 2:
            continue
        mine = G.dequantize_q8_0(G.quantize_q8_0(a), a.size).reshape(a.shape)
        assert np.array_equal(mine, tq[name][2]), name
        n_same += 1
    print('Q8_0 quantizer: %d tensors identical to llama.cpp quantize output' % n_same)


if __name__ == '__main__':
    main()
