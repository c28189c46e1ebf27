"""Llama-architecture decoder in PyTorch, written to match llama.cpp's graph exactly.

Conventions (see /work/shared/fixtures/README.md §2):
  * RMSNorm: x / sqrt(mean(x^2) + eps) * w, eps = 1e-5.
  * RoPE in ggml's NORMAL mode: consecutive pairs (d0,d1), (d2,d3), ... of each head are rotated by
    pos * base^(-2i/head_dim), i = pair index.  Because the PyTorch model itself uses this pairing, the q/k
    weights are exported as-is (no HF->GGUF permutation).
  * GQA: query head h reads kv head h // (n_head // n_head_kv) (consecutive query heads share a kv head).
  * SwiGLU FFN: down(silu(gate(x)) * up(x)).
  * Linear weights are PyTorch (out, in) row-major == GGUF ne = [in, out].
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    n_vocab: int = 3072
    n_ctx: int = 256
    n_embd: int = 256
    n_layer: int = 6
    n_head: int = 8
    n_head_kv: int = 4
    n_ff: int = 704
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    dropout: float = 0.0        # training only (residual branches and embeddings); not exported

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    def to_dict(self):
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(n_pos, head_dim, base, device=None, dtype=torch.float32):
    # computed in float64 on the CPU then cast, so the tables do not depend on float32 pow rounding
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    inv = base ** (-2.0 * i / head_dim)
    pos = torch.arange(n_pos, dtype=torch.float64)
    ang = pos[:, None] * inv[None, :]                    # [T, hd/2]
    return torch.cos(ang).to(device=device, dtype=dtype), torch.sin(ang).to(device=device, dtype=dtype)


def apply_rope(x, cos, sin):
    # x: [B, H, T, hd]; cos/sin: [T, hd/2]; rotate consecutive pairs (d0,d1),(d2,d3),...:
    #   o0 = x0*cos - x1*sin, o1 = x0*sin + x1*cos  ==  complex (x0 + i x1) * e^{i angle}
    B, H, T, D = x.shape
    xc = torch.view_as_complex(x.float().reshape(B, H, T, D // 2, 2).contiguous())
    rot = torch.complex(cos, sin)
    return torch.view_as_real(xc * rot).reshape(B, H, T, D)


def apply_rope_reference(x, cos, sin):
    """Plain-arithmetic version of apply_rope (used by the self-test)."""
    B, H, T, D = x.shape
    xp = x.reshape(B, H, T, D // 2, 2)
    x0, x1 = xp[..., 0], xp[..., 1]
    o0 = x0 * cos - x1 * sin
    o1 = x0 * sin + x1 * cos
    return torch.stack((o0, o1), dim=-1).reshape(B, H, T, D)


class Block(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        hd = c.head_dim
        self.attn_norm = RMSNorm(c.n_embd, c.norm_eps)
        self.wq = nn.Linear(c.n_embd, c.n_head * hd, bias=False)
        self.wk = nn.Linear(c.n_embd, c.n_head_kv * hd, bias=False)
        self.wv = nn.Linear(c.n_embd, c.n_head_kv * hd, bias=False)
        self.wo = nn.Linear(c.n_head * hd, c.n_embd, bias=False)
        self.ffn_norm = RMSNorm(c.n_embd, c.norm_eps)
        self.w_gate = nn.Linear(c.n_embd, c.n_ff, bias=False)
        self.w_up = nn.Linear(c.n_embd, c.n_ff, bias=False)
        self.w_down = nn.Linear(c.n_ff, c.n_embd, bias=False)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, cos, sin, mask):
        c = self.c
        B, T, _ = x.shape
        hd = c.head_dim
        h = self.attn_norm(x)
        q = self.wq(h).view(B, T, c.n_head, hd).transpose(1, 2)
        k = self.wk(h).view(B, T, c.n_head_kv, hd).transpose(1, 2)
        v = self.wv(h).view(B, T, c.n_head_kv, hd).transpose(1, 2)
        q = apply_rope(q, cos, sin) * (1.0 / math.sqrt(hd))
        k = apply_rope(k, cos, sin)
        g = c.n_head // c.n_head_kv
        if g > 1:   # query head h -> kv head h // g (same as repeat_interleave, cheaper backward)
            k = k[:, :, None].expand(B, c.n_head_kv, g, T, hd).reshape(B, c.n_head, T, hd)
            v = v[:, :, None].expand(B, c.n_head_kv, g, T, hd).reshape(B, c.n_head, T, hd)
        if mask is None:
            # fused kernel (GPU training; torch >= 2.0); q is already scaled, so scale=1
            o = F.scaled_dot_product_attention(q.to(v.dtype), k.to(v.dtype), v, is_causal=True, scale=1.0)
        else:
            att = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1)
            o = att @ v
        o = o.transpose(1, 2).reshape(B, T, c.n_head * hd)
        x = x + self.drop(self.wo(o))
        h = self.ffn_norm(x)
        x = x + self.drop(self.w_down(F.silu(self.w_gate(h)) * self.w_up(h)))
        return x


class Llama(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        assert c.n_embd % c.n_head == 0 and c.head_dim % 2 == 0 and c.n_head % c.n_head_kv == 0
        self.c = c
        self.tok_embd = nn.Embedding(c.n_vocab, c.n_embd)
        self.layers = nn.ModuleList([Block(c) for _ in range(c.n_layer)])
        self.out_norm = RMSNorm(c.n_embd, c.norm_eps)
        self.output = nn.Linear(c.n_embd, c.n_vocab, bias=False)
        self.drop = nn.Dropout(c.dropout)
        self._rope = {}
        if c.tie_embeddings:
            self.output.weight = self.tok_embd.weight
        self.reset_parameters()

    def reset_parameters(self):
        std = 0.02
        resid_std = std / math.sqrt(2 * self.c.n_layer)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith('wo.weight') or name.endswith('w_down.weight'):
                nn.init.normal_(p, 0.0, resid_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def n_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, pos0=0):
        B, T = idx.shape
        key = (pos0 + T, idx.device)
        if key not in self._rope:
            self._rope = {key: rope_tables(pos0 + T, self.c.head_dim, self.c.rope_base, device=idx.device)}
        cos, sin = self._rope[key]
        cos, sin = cos[pos0:], sin[pos0:]
        if idx.is_cuda and pos0 == 0 and hasattr(F, 'scaled_dot_product_attention'):
            mask = None
        else:
            mask = torch.full((T, T), float('-inf'), device=idx.device).triu(1)   # additive causal mask
        x = self.drop(self.tok_embd(idx))
        for l in self.layers:
            x = l(x, cos, sin, mask)
        return self.output(self.out_norm(x))

    # ---- GGUF tensor naming -------------------------------------------------------------------------
    def gguf_tensors(self):
        """Yields (gguf_name, tensor) in llama.cpp's canonical order; 1-D = norms (kept F32)."""
        yield 'token_embd.weight', self.tok_embd.weight
        for i, l in enumerate(self.layers):
            p = 'blk.%d.' % i
            yield p + 'attn_norm.weight', l.attn_norm.weight
            yield p + 'attn_q.weight', l.wq.weight
            yield p + 'attn_k.weight', l.wk.weight
            yield p + 'attn_v.weight', l.wv.weight
            yield p + 'attn_output.weight', l.wo.weight
            yield p + 'ffn_norm.weight', l.ffn_norm.weight
            yield p + 'ffn_gate.weight', l.w_gate.weight
            yield p + 'ffn_up.weight', l.w_up.weight
            yield p + 'ffn_down.weight', l.w_down.weight
        yield 'output_norm.weight', self.out_norm.weight
        yield 'output.weight', self.output.weight    # written even when tied (engines need not fall back)

    def load_gguf_tensors(self, tensors):
        """tensors: dict name -> float32 torch tensor (GGUF ne reversed == PyTorch shape)."""
        with torch.no_grad():
            for name, p in self.gguf_tensors():
                t = tensors[name]
                assert tuple(t.shape) == tuple(p.shape), (name, t.shape, p.shape)
                p.copy_(t)
            if self.c.tie_embeddings:
                # a tied model shares one Parameter; token_embd and output were written identically
                assert torch.equal(tensors['token_embd.weight'], tensors['output.weight'])
