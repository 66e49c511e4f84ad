"""One-step score-based denoising of a flow's samples (TARFlow, Zhai et al., 2024, §2.4;
STARFlow, Gu et al., 2025).

Trained on noise-augmented data x̃ = x + σ ε, a flow models p_σ = p * N(0, σ² I), and its
samples carry that noise. Tweedie's formula (Robbins, 1956; Efron, 2011) gives the posterior
mean of the clean x from the noisy one through the score of the noisy density,

    E[x | x̃] = x̃ + σ² ∇ log p_σ(x̃) = x̃ - σ² ∇(-log p_σ(x̃)),

and a flow has that score for free: the gradient of its own exact log-density (autograd
through ``log_prob``), one forward and one backward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor


def score_denoise(log_prob: Callable[..., Tensor], x: Tensor, sigma: float, batch_size: int = 500,
                  **cond) -> Tensor:
    """x̃ + σ² ∇ log p(x̃) for the flow's ``log_prob`` (e.g. ``flow.log_prob``): (B, ...)."""
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].detach().requires_grad_(True)
        part = {k: (v[i:i + batch_size] if torch.is_tensor(v) and v.ndim else v) for k, v in cond.items()}
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(log_prob(xb, **part).sum(), xb)
        out.append((xb + sigma ** 2 * grad).detach())
    return torch.cat(out)
