"""A small transformer over token sequences, causal or bidirectional, with a key-value cache.

``model(tokens, t=None, cache=None) -> logits``: the decoder-only transformer of GPT
(Radford et al., 2019: pre-LayerNorm blocks, learned positions) with an optional time input
for discrete diffusion (the time embedding is added to every token, as in D3PM's transformer
denoisers) and an optional ``KVCache`` for autoregressive decoding, whose slots may sit at
different positions — the in-flight batching of requests of different lengths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minigen.nets.embeddings import sinusoidal_embedding

Tensor = torch.Tensor


class KVCache:
    """Keys and values of every layer for ``batch`` slots of up to ``max_len`` positions:
    k, v (depth, B, heads, max_len, head_dim), and ``lengths`` (B,), the number of positions each
    slot holds. A step appends n tokens per slot at positions lengths .. lengths + n - 1; a slot
    is reused for a new request by ``reset(slot)`` (its stale entries are masked out, since a
    query at position p attends to keys j <= p only)."""

    def __init__(self, depth: int, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        shape = (depth, batch, heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.max_len = max_len

    def reset(self, slot: int | Tensor) -> None:
        """Empty slot(s): the next tokens written there start at position 0."""
        self.lengths[slot] = 0


class Block(nn.Module):
    """x <- x + Attn(LN(x)),  x <- x + MLP(LN(x)) (pre-LN; Radford et al., 2019). With a cache, the
    new keys/values are written at each slot's positions and the queries attend to keys j <= p."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, positions: Tensor, causal: bool, cache: KVCache | None = None,
                layer: int = 0) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        key_pos = positions
        if cache is not None:  # write the new keys/values at their positions, read them all
            rows = torch.arange(b, device=x.device)[:, None]
            cache.k[layer][rows, :, positions] = k.transpose(1, 2)
            cache.v[layer][rows, :, positions] = v.transpose(1, 2)
            k, v = cache.k[layer], cache.v[layer]
            key_pos = torch.arange(cache.max_len, device=x.device).expand(b, -1)
        mask = None
        if causal or cache is not None:  # (B, 1, n, keys): attend to keys at positions <= p
            mask = (key_pos[:, None, :] <= positions[:, :, None])[:, None]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.drop(self.proj(h.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TokenTransformer(nn.Module):
    """Logits over ``out_vocab`` (default ``vocab``) for every position of a token sequence.

    Embeds tokens in 0..vocab-1 and positions 0..length-1 (learned), adds c = MLP(sinusoidal(t))
    when ``time_input`` (discrete diffusion), runs ``depth`` blocks (causal for an
    autoregressive model, bidirectional for a denoiser) and a final LN + linear head.

    Shapes: tokens (B, n) int64, t (B,) or None -> logits (B, n, out_vocab). With ``cache``
    (causal models only) the n tokens of slot b sit at positions cache.lengths[b] + 0..n-1, and
    the cache's lengths advance by n.
    """

    def __init__(self, vocab: int, length: int, dim: int = 64, depth: int = 3, heads: int = 4,
                 causal: bool = False, time_input: bool = False, out_vocab: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        if min(vocab, length, dim, depth, heads) <= 0 or dim % heads:
            raise ValueError(f"need positive sizes and dim divisible by heads, got vocab={vocab}, "
                             f"length={length}, dim={dim}, depth={depth}, heads={heads}")
        self.vocab, self.length, self.dim, self.depth, self.heads = vocab, length, dim, depth, heads
        self.causal, self.time_input = causal, time_input
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(length, dim))
        for w in (self.tok.weight, self.pos):  # GPT-2's initialisation: tokens and positions alike
            nn.init.normal_(w, std=0.02)
        self.time_mlp = (nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
                         if time_input else None)
        self.blocks = nn.ModuleList([Block(dim, heads, dropout) for _ in range(depth)])
        self.ln_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_vocab or vocab)

    def new_cache(self, batch: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty ``KVCache`` for ``batch`` slots of ``length`` positions."""
        p = self.head.weight
        return KVCache(self.depth, batch, self.heads, self.length, self.dim // self.heads,
                       dtype or p.dtype, p.device)

    def forward(self, tokens: Tensor, t: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        if tokens.ndim != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be (B, n) int64, got {tuple(tokens.shape)} {tokens.dtype}")
        b, n = tokens.shape
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab:
            raise ValueError(f"tokens must lie in 0..{self.vocab - 1}")
        if cache is not None and not self.causal:
            raise ValueError("a KV cache needs a causal model")
        if self.time_input != (t is not None):
            raise ValueError("pass t exactly when the model was built with time_input=True")
        start = cache.lengths if cache is not None else torch.zeros(b, dtype=torch.long, device=tokens.device)
        positions = start[:, None] + torch.arange(n, device=tokens.device)
        if int(positions.max()) >= self.length:
            raise ValueError(f"positions up to {int(positions.max())} exceed length {self.length}")
        h = self.tok(tokens) + self.pos[positions]
        if t is not None:
            t = torch.as_tensor(t, dtype=h.dtype, device=h.device).expand(b)
            h = h + self.time_mlp(sinusoidal_embedding(t, self.dim))[:, None]
        for i, block in enumerate(self.blocks):
            h = block(h, positions, self.causal, cache, i)
        if cache is not None:
            cache.lengths += n
        return self.head(self.ln_out(h))
