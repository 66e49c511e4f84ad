"""Residual vector quantisation (RVQ) of small images into token stacks (Juang & Gray, 1982;
Zeghidour et al., 2021, SoundStream; Lee et al., 2022, RQ-VAE), fitted by k-means, no network.

An image is cut into non-overlapping p x p patches (vectors z in R^{p²}); depth d quantises the
residual left by depths 0..d-1 with its own codebook C_d of size K:

    r_0 = z,   c_d = argmin_k ||r_d - C_d[k]||²,   r_{d+1} = r_d - C_d[c_d],   z_hat_D = sum_{d<D} C_d[c_d].

Each position holds a stack of D tokens; coarse depths carry most of the signal, fine ones the
rest. Fitting C_d by Lloyd's k-means on the training residuals r_d makes the training error
non-increasing in depth: a cluster's mean is never farther from its members than 0 is, and the
nearest-code assignment can only lower the error further.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def to_patches(x: Tensor, patch: int) -> Tensor:
    """(N, C, H, W) -> (N, P, C p²): the non-overlapping p x p patches in row-major order."""
    n, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    x = x.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // patch) * (w // patch), c * patch * patch)

def from_patches(z: Tensor, patch: int, channels: int, size: int) -> Tensor:
    """The inverse of ``to_patches`` for square (N, C, size, size) images."""
    n, g = len(z), size // patch
    z = z.reshape(n, g, g, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(n, channels, size, size)

def nearest_code(r: Tensor, codebook: Tensor) -> Tensor:
    """argmin_k ||r - C[k]||² for rows r (M, dim), codebook (K, dim) -> (M,) int64."""
    return torch.cdist(r, codebook).argmin(1)

def kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator) -> Tensor:
    """Lloyd's k-means, initialised at k distinct data rows; ends on a mean update, so every
    centre is the mean of the rows assigned to it (an empty cluster keeps its centre). (k, dim)."""
    if not 1 <= k <= len(x):
        raise ValueError(f"need 1 <= k <= {len(x)} rows, got k={k}")
    centres = x[torch.randperm(len(x), generator=generator)[:k]].clone()
    for _ in range(max(iters, 1)):
        assign = nearest_code(x, centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres


class ResidualQuantizer:
    """D codebooks of K codes for patch vectors of ``dim`` entries: ``fit`` by residual k-means,
    ``encode`` greedily (N, P, dim) -> codes (N, P, D), ``decode`` (N, P, D') -> the sum of the
    first D' depths' codes (N, P, dim); ``embed`` gives each depth's code vectors (N, P, D, dim)."""

    def __init__(self, depth: int, codebook_size: int):
        if depth < 1 or codebook_size < 2:
            raise ValueError(f"need depth >= 1 and codebook_size >= 2, got {depth}, {codebook_size}")
        self.depth, self.codebook_size = depth, codebook_size
        self.codebooks: Tensor | None = None  # (D, K, dim)

    def fit(self, z: Tensor, generator: torch.Generator, iters: int = 25) -> ResidualQuantizer:
        r, books = z.reshape(-1, z.shape[-1]).double(), []
        for _ in range(self.depth):
            books.append(kmeans(r, self.codebook_size, iters, generator))
            r = r - books[-1][nearest_code(r, books[-1])]
        self.codebooks = torch.stack(books).float()
        return self

    def _books(self) -> Tensor:
        if self.codebooks is None:
            raise RuntimeError("fit the quantiser first")
        return self.codebooks

    def encode(self, z: Tensor) -> Tensor:
        books = self._books()
        r, codes = z.reshape(-1, z.shape[-1]).float(), []
        for book in books:
            codes.append(nearest_code(r, book))
            r = r - book[codes[-1]]
        return torch.stack(codes, -1).reshape(*z.shape[:-1], self.depth)

    def embed(self, codes: Tensor) -> Tensor:
        books = self._books()
        if codes.shape[-1] > self.depth:
            raise ValueError(f"codes have {codes.shape[-1]} depths, the quantiser {self.depth}")
        if codes.shape[-1] == 0:  # no depth: the zero vector
            return books.new_zeros(*codes.shape, books.shape[-1])
        return torch.stack([books[d][codes[..., d]] for d in range(codes.shape[-1])], -2)

    def decode(self, codes: Tensor) -> Tensor:
        return self.embed(codes).sum(-2)
