"""A class-conditional flow is a Bayes classifier (generative classification; e.g. Nalisnick
et al., 2019, "Hybrid Models with Deep and Invertible Features"; STARFlow's conditional TARFlow):

    p(c | x) = p(x | c) p(c) / Σ_c' p(x | c') p(c'),

with the exact conditional likelihoods log p(x | c) of ``flow.log_prob(x, y=c)``. One forward
pass per class.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


@torch.no_grad()
def class_log_likelihoods(flow, x: Tensor, num_classes: int, batch_size: int = 500) -> Tensor:
    """log p(x | c) for every class c: (B, num_classes)."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        out.append(torch.stack([flow.log_prob(xb, y=torch.full((len(xb),), c, device=xb.device))
                                for c in range(num_classes)], 1))
    return torch.cat(out)


def bayes_classify(log_lik: Tensor, log_prior: Tensor | None = None) -> Tensor:
    """log p(c | x) from log p(x | c) (B, K) and log p(c) (K,) (uniform when None): (B, K)."""
    logits = log_lik if log_prior is None else log_lik + log_prior
    return logits.log_softmax(1)
