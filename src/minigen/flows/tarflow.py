"""TARFlow: a normalizing flow of transformer autoregressive blocks (Zhai et al., 2024,
"Normalizing Flows are Capable Generative Models"; the core of STARFlow, Gu et al., 2025).

An image becomes a sequence of L patches x_1..x_L (token dimension d = C p²). Each block is a
causal transformer whose output at position i - 1 gives the affine parameters of token i:

    z_i = (x_i - μ_i(x_<i)) · exp(-α_i(x_<i)),     log|det ∂z/∂x| = -Σ_i Σ_d α_i ,

an affine autoregressive flow (MAF; Papamakarios et al., 2017) with a transformer for μ, α.
The input sequence is shifted by one (a learned start vector at position 0), so token 1
depends on the class only. The sequence order is **reversed between blocks**, so that every
token sees every other in some block. The output layer starts at zero: every block starts
as the identity. Training is maximum likelihood on a standard normal base.

Inverting a block is sequential (token i needs x_<i: L passes; here without a KV cache) or
Jacobi iteration (``flows.jacobi``: parallel sweeps, exact after ≤ L). Guidance multiplies
the per-token Gaussians (``flows.guidance``). Class labels: ``y`` (B,) int64, the null label
(index ``num_classes``) for the unconditional model, dropped at rate ``label_dropout``.
"""

from __future__ import annotations

import torch
from torch import nn

from minigen.flows.guidance import guided_gaussian
from minigen.flows.invertible import FlowLayer, NormalizingFlow
from minigen.flows.jacobi import jacobi_fixed_point
from minigen.nets.transformer import patchify, unpatchify
from minigen.recipe.results import SampleResult

Tensor = torch.Tensor


class TARFlowBlock(FlowLayer):
    """One causal-transformer affine autoregressive block on (B, L, d) tokens; ``flip`` reads
    the sequence in reverse order. ``depth`` pre-norm transformer layers of width ``width``."""

    def __init__(self, token_dim: int, n_tokens: int, width: int = 64, depth: int = 2,
                 heads: int = 4, num_classes: int | None = None, flip: bool = False):
        super().__init__()
        if min(token_dim, n_tokens, width, depth, heads) <= 0 or width % heads:
            raise ValueError("token_dim, n_tokens, width, depth, heads must be positive, width % heads == 0")
        self.flip, self.n_tokens, self.num_classes = flip, n_tokens, num_classes
        self.proj_in = nn.Linear(token_dim, width)
        self.start = nn.Parameter(torch.zeros(width))
        self.pos = nn.Parameter(0.02 * torch.randn(n_tokens, width))
        self.label = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.layers = nn.ModuleList([nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, 2 * token_dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        self.register_buffer("causal", torch.triu(torch.full((n_tokens, n_tokens), float("-inf")), 1))

    def params(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(μ, α) of tokens 0..l-1 from x (B, l, d) in the block's order (x_{l-1} is not read)."""
        b, n = x.shape[:2]
        h = torch.cat([self.start.expand(b, 1, -1), self.proj_in(x[:, :-1])], 1) + self.pos[:n]
        if self.label is not None:
            y = torch.full((b,), self.num_classes, device=x.device) if y is None else y
            h = h + self.label(y)[:, None]
        for layer in self.layers:
            h = layer(h, src_mask=self.causal[:n, :n], is_causal=True)
        return self.proj_out(self.norm(h)).chunk(2, dim=-1)

    def _order(self, x: Tensor) -> Tensor:
        return x.flip(1) if self.flip else x

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._order(x)
        mu, alpha = self.params(x, y)
        z = (x - mu) * torch.exp(-alpha)
        return self._order(z), -alpha.reshape(len(x), -1).sum(1)

    def token_params(self, x: Tensor, y: Tensor | None, guidance: float) -> tuple[Tensor, Tensor]:
        """(μ, α) with classifier-free guidance w (two passes when w != 0)."""
        mu, alpha = self.params(x, y)
        if guidance:
            mu_u, alpha_u = self.params(x, None)
            mu, alpha = guided_gaussian(mu, alpha, mu_u, alpha_u, guidance)
        return mu, alpha

    def inverse(self, z: Tensor, y: Tensor | None = None, guidance: float = 0.0) -> Tensor:
        """The exact sequential inverse: token i from x_<i, L passes (on growing prefixes)."""
        z = self._order(z)
        x = torch.zeros_like(z)
        for i in range(z.shape[1]):
            mu, alpha = self.token_params(x[:, :i + 1], y, guidance)
            x = x.clone()
            x[:, i] = z[:, i] * torch.exp(alpha[:, i]) + mu[:, i]
        return self._order(x)

    def inverse_jacobi(self, z: Tensor, y: Tensor | None = None, guidance: float = 0.0,
                       tol: float = 0.0, max_sweeps: int | None = None) -> tuple[Tensor, int]:
        """Jacobi iteration from x⁰ = z: (x, sweeps); exact after ``n_tokens`` sweeps."""
        z = self._order(z)

        def g(x):
            mu, alpha = self.token_params(x, y, guidance)
            return z * torch.exp(alpha) + mu
        x, sweeps, _ = jacobi_fixed_point(g, z, max_sweeps or z.shape[1], tol)
        return self._order(x), sweeps


class TARFlow(NormalizingFlow):
    """TARFlow on (B, C, H, W) images cut into p x p patches (or (B, D) vectors cut into tokens
    of ``patch`` values): blocks of depths ``depths`` (one int per block; deep-shallow
    allocation is e.g. (5, 1, 1, 1)), alternating order. ``model.log_prob(x, y=labels)``."""

    def __init__(self, event_shape: tuple[int, ...], patch: int = 2, width: int = 64,
                 depths=(2, 2, 2, 2), heads: int = 4, num_classes: int | None = None, seed: int = 0,
                 label_dropout: float = 0.1):
        torch.manual_seed(seed)
        event_shape = tuple(event_shape)
        if len(event_shape) == 3:
            c, h, w = event_shape
            if h % patch or w % patch:
                raise ValueError(f"image side {h}x{w} is not divisible by the patch size {patch}")
            token_dim, n_tokens = c * patch * patch, (h // patch) * (w // patch)
        elif len(event_shape) == 1:
            if event_shape[0] % patch:
                raise ValueError(f"dimension {event_shape[0]} is not divisible by the token size {patch}")
            token_dim, n_tokens = patch, event_shape[0] // patch
        else:
            raise ValueError(f"TARFlow takes (C, H, W) images or (D,) vectors, got {event_shape}")
        blocks = [TARFlowBlock(token_dim, n_tokens, width, d, heads, num_classes, flip=bool(k % 2))
                  for k, d in enumerate(depths)]
        super().__init__(_Tokens(blocks, event_shape, patch), event_shape)
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout}")
        self.patch, self.n_tokens, self.num_classes = patch, n_tokens, num_classes
        self.label_dropout = label_dropout

    def loss(self, model, x: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None,
             per_sample: bool = False):
        """``train``'s loss on batches (x,) or (x, y): -log p(x | y) / D, each label replaced by
        the null label with probability ``label_dropout`` (the unconditional model guidance needs)."""
        if y is not None and self.label_dropout:
            drop = torch.rand(len(y), generator=generator).to(y.device) < self.label_dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return super().loss(model, x, generator, per_sample, **({} if y is None else {"y": y}))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               y: Tensor | None = None, guidance: float = 0.0, method: str = "sequential",
               tol: float = 0.0) -> SampleResult:
        """x = f^{-1}(z): ``method`` "sequential" (nfe = L per block) or "jacobi" (nfe = sweeps);
        guidance doubles the passes."""
        if method not in ("sequential", "jacobi"):
            raise ValueError(f"unknown method {method!r}; choose from ['jacobi', 'sequential']")
        p = next(self.parameters())
        z = torch.randn((n, *self.event_shape), generator=generator).to(p) * temperature
        x, nfe = self.transform.invert(z, y, guidance, method, tol)
        return SampleResult(x, nfe=nfe * (2 if guidance else 1))


class _Tokens(FlowLayer):
    """Tokenise, run the blocks, untokenise (a permutation: log|det| = 0)."""

    def __init__(self, blocks, event_shape, patch):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.event_shape, self.patch = event_shape, patch

    def tokens(self, x: Tensor) -> Tensor:
        return patchify(x, self.patch) if x.ndim == 4 else x.reshape(len(x), -1, self.patch)

    def image(self, t: Tensor) -> Tensor:
        if len(self.event_shape) == 3:
            return unpatchify(t, self.patch, *self.event_shape)
        return t.reshape(len(t), -1)

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h, log_det = self.tokens(x), x.new_zeros(len(x))
        for block in self.blocks:
            h, ld = block(h, y)
            log_det = log_det + ld
        return self.image(h), log_det

    def inverse(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.invert(z, y)[0]

    def invert(self, z: Tensor, y=None, guidance: float = 0.0, method: str = "sequential",
               tol: float = 0.0) -> tuple[Tensor, int]:
        """(x, passes): each block's inverse, last block first."""
        h, passes = self.tokens(z), 0
        for block in reversed(self.blocks):
            if method == "jacobi":
                h, sweeps = block.inverse_jacobi(h, y, guidance, tol)
                passes += sweeps
            else:
                h = block.inverse(h, y, guidance)
                passes += h.shape[1]
        return self.image(h), passes
