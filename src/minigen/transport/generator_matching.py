"""Generator matching in 1D: a flow, a jump process and their Markov superposition
that share the marginals of the CondOT path (Holderrieth et al., 2024, "Generator
Matching: Generative modeling with arbitrary Markov processes").

A Markov process is described by its generator, L_t f(x) = d/dh E[f(X_{t+h}) | X_t = x]:

    flow       L f = v · grad f
    diffusion  L f = (sigma²/2) Laplacian f
    jump       L f = int (f(y) - f(x)) Q_t(dy; x),  Q_t(dy; x) = lambda_t(x) J_t(dy; x),

and it generates the path p_t if the Kolmogorov forward equation d/dt p_t = L_t* p_t
holds. Generators that generate p_t can be mixed: w L_flow + (1 - w) L_jump with
w in [0, 1] generates p_t too (the paper's Markov superposition).

The jump generator for any 1D density path (the construction of the paper's jump
examples, derived and checked here), with
[a]_+ = max(a, 0), [a]_- = max(-a, 0):

    lambda_t(x) = [d_t p_t(x)]_- / p_t(x),     J_t(dy) ∝ [d_t p_t(y)]_+ dy.

Mass leaves where the density falls and lands where it rises:
int Q(x; y) p(y) dy - lambda(x) p(x) = [d_t p(x)]_+ - [d_t p(x)]_- = d_t p(x), since
int [d_t p]_+ = int [d_t p]_- (d_t p integrates to 0).

The path here: x_t = t x1 + (1 - t) x0, x0 ~ N(0, 1), x1 ~ sum_k w_k N(m_k, v_k). Given the
component k, x_t ~ N(mu_k, s_k²) with mu_k = t m_k, s_k² = t² v_k + (1 - t)². A single
conditioning point z is the case K = 1, v = 0: p_t(x | z) = N(t z, (1 - t)²), and

    d_t log p_t(x | z) = (u z - u² + 1) / (1 - t),   u = (x - t z) / (1 - t),

so the conditional CondOT jump rate is lambda = [u² - u z - 1]_+ / (1 - t): only points
farther than the roots u = (z ± sqrt(z² + 4)) / 2 from the moving mean jump, and they
land inside that window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor
JUMPS = ("marginal", "posterior")


@dataclass
class MixturePath1D:
    """CondOT path from N(0, 1) to a 1D Gaussian mixture: weights, means, variances (K,)."""

    weights: Tensor
    means: Tensor
    variances: Tensor

    def __post_init__(self):
        self.weights, self.means, self.variances = (
            torch.as_tensor(v, dtype=torch.float64).reshape(-1)
            for v in (self.weights, self.means, self.variances))
        k = len(self.weights)
        if self.means.shape != (k,) or self.variances.shape != (k,):
            raise ValueError("weights, means and variances must have the same length K")
        if (self.weights < 0).any() or abs(float(self.weights.sum()) - 1) > 1e-9:
            raise ValueError("weights must be >= 0 and sum to 1")
        if (self.variances < 0).any():
            raise ValueError("variances must be >= 0")

    def components(self, t: float):
        """mu_k, s_k, mu_k', s_k' at time t in [0, 1]: four (K,) tensors."""
        if not 0 <= t <= 1:
            raise ValueError(f"t must lie in [0, 1], got {t}")
        s = torch.sqrt(t**2 * self.variances + (1 - t) ** 2)
        if (s <= 0).any():
            raise ValueError(f"a component has zero width at t = {t}; stop before t = 1")
        return t * self.means, s, self.means, (t * self.variances - (1 - t)) / s

    def component_terms(self, x: Tensor, t: float):
        """log(w_k N(x; mu_k, s_k²)) and d_t log N(x; mu_k, s_k²): (B, K) each.

        d_t log N = (u mu' + s' (u² - 1)) / s with u = (x - mu) / s."""
        mu, s, dmu, ds = self.components(t)
        u = (x.double().reshape(-1, 1) - mu) / s
        logp = torch.log(self.weights) - 0.5 * u**2 - torch.log(s) - 0.5 * math.log(2 * math.pi)
        return logp, (u * dmu + ds * (u**2 - 1)) / s

    def density(self, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        """p_t(x) and d_t p_t(x): (B,) each."""
        logp, dlog = self.component_terms(x, t)
        p_k = logp.exp()
        return p_k.sum(1), (p_k * dlog).sum(1)

    def posterior(self, x: Tensor, t: float) -> Tensor:
        """p(k | x_t = x): (B, K)."""
        return torch.softmax(self.component_terms(x, t)[0], dim=1)

    def sample(self, n: int, t: float, generator: torch.Generator) -> Tensor:
        """Exact draws from p_t: (n,)."""
        mu, s, _, _ = self.components(t)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return mu[k] + s[k] * torch.randn(n, generator=generator, dtype=torch.float64)


def flow_velocity(path: MixturePath1D, x: Tensor, t: float) -> Tensor:
    """Marginal velocity u_t(x) = sum_k p(k|x) (mu_k' + s_k'/s_k (x - mu_k)): (B,)
    (the conditional Gaussian flow of each component, averaged with the posterior)."""
    mu, s, dmu, ds = path.components(t)
    x = x.double().reshape(-1, 1)
    return (path.posterior(x, t) * (dmu + ds / s * (x - mu))).sum(1)


def jump_rate(path: MixturePath1D, x: Tensor, t: float, jump: str = "marginal") -> Tensor:
    """Total jump intensity lambda_t(x): (B,).

    ``marginal``:  [d_t p_t(x)]_- / p_t(x), the jump construction on p_t itself;
    ``posterior``: sum_k p(k|x) [d_t log p_t(x | k)]_-, the conditional generators averaged
    with the posterior weights (generator matching's marginalisation of conditional
    generators)."""
    if jump not in JUMPS:
        raise ValueError(f"unknown jump construction {jump!r}; choose from {JUMPS}")
    logp, dlog = path.component_terms(x, t)
    post = torch.softmax(logp, dim=1)  # d_t p / p = sum_k p(k|x) d_t log p_k: no underflow
    if jump == "marginal":
        return (-(post * dlog).sum(1)).clamp_min(0)
    return (post * (-dlog).clamp_min(0)).sum(1)


def sample_from_grid(weights: Tensor, grid: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n draws from the density ∝ ``weights`` on the uniform ``grid`` (G,), uniform within a
    cell: (n,). Used for the jump destinations J_t ∝ [d_t p_t]_+."""
    if weights.shape != grid.shape or not (weights >= 0).all() or weights.sum() <= 0:
        raise ValueError("weights must be >= 0, not all zero, with the grid's shape")
    idx = torch.multinomial(weights.double(), n, replacement=True, generator=generator)
    cell = grid[1] - grid[0]
    return grid[idx] + cell * (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5)


def jump_destinations(path: MixturePath1D, x: Tensor, t: float, generator: torch.Generator,
                      jump: str = "marginal", n_grid: int = 4001) -> Tensor:
    """Where the points x (B,) that jump land: (B,).

    ``marginal``:  y ~ J_t ∝ [d_t p_t(y)]_+ (the same law for every x);
    ``posterior``: pick k ∝ p(k|x) [d_t log p_t(x|k)]_-, then y ∝ [d_t p_t(y | k)]_+."""
    mu, s, _, _ = path.components(t)
    lo, hi = float((mu - 9 * s).min()), float((mu + 9 * s).max())
    grid = torch.linspace(lo, hi, n_grid, dtype=torch.float64)
    if jump == "marginal":
        return sample_from_grid(path.density(grid, t)[1].clamp_min(0), grid, len(x), generator)
    if jump != "posterior":
        raise ValueError(f"unknown jump construction {jump!r}; choose from {JUMPS}")
    logp, dlog = path.component_terms(x, t)
    k = torch.multinomial(torch.softmax(logp, 1) * (-dlog).clamp_min(0) + 1e-300, 1,
                          generator=generator)[:, 0]
    lg, dg = path.component_terms(grid, t)
    rise = (lg.exp() * dg).clamp_min(0)  # (G, K): [d_t p_t(y | k)]_+ w_k
    y = torch.empty(len(x), dtype=torch.float64)
    for j in k.unique().tolist():
        sel = k == j
        y[sel] = sample_from_grid(rise[:, j], grid, int(sel.sum()), generator)
    return y


def _flow_half_step(path: MixturePath1D, x: Tensor, t: float, h: float, w: float) -> Tensor:
    """Midpoint rule for dx/dt = w u_t(x) over [t, t + h]."""
    if w == 0:
        return x
    x_mid = x + 0.5 * h * w * flow_velocity(path, x, t)
    return x + h * w * flow_velocity(path, x_mid, t + 0.5 * h)


@torch.no_grad()
def simulate(path: MixturePath1D, x0: Tensor, steps: int, generator: torch.Generator,
             w_flow: float = 1.0, t_end: float = 1.0, jump: str = "marginal",
             return_trajectory: bool = False) -> Tensor:
    """Simulate the superposition w_flow L_flow + (1 - w_flow) L_jump from t = 0 to t_end
    on ``steps`` equal steps: (B,), or (steps + 1, B) with ``return_trajectory``.

    Each step of size h is a Strang splitting: half a flow step (x' = w u_t(x), midpoint
    rule), then each point jumps with probability 1 - exp(-h (1 - w) lambda(x)) to a draw
    from J, both taken at the step's midpoint t + h/2, then the other half flow step.
    w = 1 is the flow, w = 0 the pure jump process. (Rates and destinations at the left end
    of the step instead lag the moving density: measured 11 standard errors of bias on the
    mean at 100 steps, against 1.3 with the midpoint.)"""
    if not 0 <= w_flow <= 1:
        raise ValueError(f"w_flow must lie in [0, 1], got {w_flow}")
    if not isinstance(steps, int) or steps < 1 or not 0 < t_end <= 1:
        raise ValueError(f"need a positive integer steps and 0 < t_end <= 1, got {steps}, {t_end}")
    x, h = x0.double().reshape(-1).clone(), t_end / steps
    traj = [x.clone()]
    for i in range(steps):
        t = i * h
        x = _flow_half_step(path, x, t, h / 2, w_flow)
        if w_flow < 1:
            p_jump = 1 - torch.exp(-h * (1 - w_flow) * jump_rate(path, x, t + h / 2, jump))
            jumps = torch.rand(len(x), generator=generator, dtype=torch.float64) < p_jump
            if jumps.any():
                x[jumps] = jump_destinations(path, x[jumps], t + h / 2, generator, jump)
        x = _flow_half_step(path, x, t + h / 2, h / 2, w_flow)
        if return_trajectory:
            traj.append(x.clone())
    return torch.stack(traj) if return_trajectory else x


def wasserstein1_1d(x: Tensor, y: Tensor) -> float:
    """Exact W1 between two 1D empirical measures of equal size: mean |sorted x - sorted y|."""
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"need two 1D samples of equal size, got {tuple(x.shape)}, {tuple(y.shape)}")
    return float((torch.sort(x)[0] - torch.sort(y)[0]).abs().mean())
