"""Closed forms for a Gaussian target N(mu, Sigma) and a N(0, I) source.

On a path x_t = alpha x1 + sigma x0 the marginal is Gaussian,
p_t = N(alpha mu, C_t) with C_t = alpha² Sigma + sigma² I, and every
prediction is linear in x_t:

    E[x1 | x_t] = mu + alpha Sigma C_t^{-1} (x_t - alpha mu)
    E[x0 | x_t] = sigma C_t^{-1} (x_t - alpha mu)
    score       = -C_t^{-1} (x_t - alpha mu)
    u_t(x_t)    = alpha' E[x1 | x_t] + sigma' E[x0 | x_t]   (the marginal velocity)

These are the ground truth for tests and for the demonstrations of chapter 00
(e.g. Lipman et al., 2023, §4; Albergo et al., 2023, §3).
"""

from __future__ import annotations

import math

import torch

from minigen.broadcast import expand_t
from minigen.recipe.paths import GaussianPath

Tensor = torch.Tensor


class GaussianTarget:
    """A Gaussian data distribution N(mu, Sigma) in d dimensions (float64)."""

    def __init__(self, mu: Tensor, cov: Tensor):
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.cov = torch.as_tensor(cov, dtype=torch.float64)
        d = self.mu.shape[0]
        if self.cov.shape != (d, d):
            raise ValueError(f"cov must be ({d}, {d}), got {tuple(self.cov.shape)}")
        self.chol = torch.linalg.cholesky(self.cov)  # raises if not positive definite

    @property
    def dim(self) -> int:
        return self.mu.shape[0]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.mu + z @ self.chol.T

    def log_prob(self, x: Tensor) -> Tensor:
        return torch.distributions.MultivariateNormal(self.mu, self.cov).log_prob(x.double())

    def _ac(self, path: GaussianPath, xt: Tensor, t: Tensor):
        tt = expand_t(t, xt).double()
        a, s = path.alpha(tt), path.sigma(tt)
        eye = torch.eye(self.dim, dtype=torch.float64)
        c = a[:, :, None] ** 2 * self.cov + s[:, :, None] ** 2 * eye  # (B, d, d)
        r = torch.linalg.solve(c, (xt.double() - a * self.mu)[..., None])[..., 0]  # C^-1 (x - a mu)
        return tt, a, s, r

    def marginal(self, path: GaussianPath, t: float) -> tuple[Tensor, Tensor]:
        """Mean and covariance of p_t."""
        tt = torch.tensor(float(t), dtype=torch.float64)
        a, s = path.alpha(tt), path.sigma(tt)
        return a * self.mu, a**2 * self.cov + s**2 * torch.eye(self.dim, dtype=torch.float64)

    def x1_mean(self, path, xt, t) -> Tensor:
        """E[x1 | x_t] = mu + alpha Sigma C_t^{-1} (x_t - alpha mu): (B, d)."""
        _, a, _, r = self._ac(path, xt, t)
        return self.mu + a * (r @ self.cov.T)

    def epsilon_mean(self, path, xt, t) -> Tensor:
        """E[x0 | x_t] = sigma C_t^{-1} (x_t - alpha mu): (B, d)."""
        _, _, s, r = self._ac(path, xt, t)
        return s * r

    def score(self, path, xt, t) -> Tensor:
        """grad log p_t(x_t) = -C_t^{-1} (x_t - alpha mu): (B, d)."""
        return -self._ac(path, xt, t)[3]

    def velocity(self, path, xt, t) -> Tensor:
        """Marginal velocity u_t(x_t) = alpha' E[x1 | x_t] + sigma' E[x0 | x_t]: (B, d)."""
        tt, _, _, _ = self._ac(path, xt, t)
        return path.d_alpha(tt) * self.x1_mean(path, xt, t) + path.d_sigma(tt) * self.epsilon_mean(
            path, xt, t)

    def marginal_log_prob(self, path, xt, t: float) -> Tensor:
        m, c = self.marginal(path, t)
        return torch.distributions.MultivariateNormal(m, c).log_prob(xt.double())


def gaussian_entropy(cov: Tensor) -> float:
    """Differential entropy of N(., cov) in nats: ½ log det(2 pi e cov)."""
    d = cov.shape[0]
    return 0.5 * (d * math.log(2 * math.pi * math.e) + torch.logdet(cov).item())
