"""Classifier-free guidance for affine autoregressive flows (STARFlow, Gu et al., 2025, §3.3).

Given the past, each token of an affine autoregressive flow is Gaussian in data space:
x_i = μ_i + exp(α_i) z_i with z_i ~ N(0, 1) means p(x_i | x_<i) = N(μ_i, σ_i²), σ_i = exp(α_i).
Guidance with weight w samples each token from the normalised product

    p_w(x_i | x_<i) ∝ p_c(x_i | x_<i)^{1+w} / p_u(x_i | x_<i)^w ,

of the conditional (c) and unconditional (u) Gaussians, which is again Gaussian: with
precisions λ = 1/σ²,

    λ_w = (1 + w) λ_c - w λ_u,     μ_w = ((1 + w) λ_c μ_c - w λ_u μ_u) / λ_w .

λ_w must stay positive (for w > 0 it fails where the unconditional model is much sharper
than the conditional one); it is floored at ``min_precision`` · λ_c.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def guided_gaussian(mu_c: Tensor, alpha_c: Tensor, mu_u: Tensor, alpha_u: Tensor, w: float,
                    min_precision: float = 0.1) -> tuple[Tensor, Tensor]:
    """(μ_w, α_w) of p_c^{1+w} / p_u^w for Gaussians N(μ, exp(2α)), elementwise; w = 0 gives
    (μ_c, α_c)."""
    if not min_precision > 0:
        raise ValueError(f"min_precision must be > 0, got {min_precision}")
    lam_c, lam_u = torch.exp(-2 * alpha_c), torch.exp(-2 * alpha_u)
    lam = torch.maximum((1 + w) * lam_c - w * lam_u, min_precision * lam_c)
    mu = ((1 + w) * lam_c * mu_c - w * lam_u * mu_u) / lam
    return mu, -0.5 * torch.log(lam)
