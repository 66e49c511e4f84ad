# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version,-jupytext.text_representation.format_version
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (minigen)
#     language: python
#     name: minigen
# ---

# %% [markdown]
# # 00 · The unified picture
#
# Diffusion models, score-based SDEs, flow matching, rectified flow and stochastic
# interpolants look like different theories. "The Principles of Diffusion Models"
# shows they share one object: a **time-dependent velocity field** that carries a
# simple source distribution to the data. In minigen every continuous paradigm is one
# recipe with five swappable parts:
#
# | part | what it is | examples in this book |
# |---|---|---|
# | coupling | how source and data samples are paired | independent, minibatch OT, Sinkhorn, Gibbs weights (W-CFM), reflow |
# | path | $x_t = \alpha(t)\,x_1 + \sigma(t)\,x_0\ (+\gamma(t)\,z)$ with exact conversions | linear (CondOT), VP cosine, VP linear-β (DDPM), VE |
# | objective | regression of one prediction type, a weighting, a time sampler | CFM, denoising score matching, $L_\text{simple}$ |
# | solver | integrates the learned field and counts network calls (NFE) | Euler, midpoint, Heun, RK4, dopri5 |
# | model wrapper | `model(x, t, **cond)` | guidance, prediction-type adapters |
#
# **Time convention, everywhere:** $t\in[0,1]$, $t=0$ is the source (noise), $t=1$ the
# data; $\alpha$ multiplies the data and $\sigma$ the source.
#
# This chapter draws the schedules side by side, shows that the four things a network
# can predict — velocity, $x_1$, $\varepsilon$ and score — are one object seen through
# the path, and maps the time conventions of the papers onto ours.

# %% tags=["parameters"]
from minigen.workbook.record import parameter_defaults, quick_from_env

quick = quick_from_env()  # True under make test and make lab (MINIGEN_QUICK); write False for a full run
seed = 0
defaults = parameter_defaults(globals())  # before papermill's injected parameters

# %%
import time

import matplotlib.pyplot as plt
import torch

from minigen.eval.gaussian import GaussianTarget
from minigen.recipe import paths as P
from minigen.recipe.ode_solvers import integrate
from minigen.workbook.record import ResultsTable, metric, record
from minigen.workbook.viz import show_source

t_start = time.perf_counter()
# quick mode only shrinks the sample counts of the checks below (2000 vs 20000).
n_check = 2000 if quick else 20000
print(f"quick={quick}: {n_check} samples per check")

# %% [markdown]
# ## The paths
#
# A Gaussian path is a schedule $(\alpha(t), \sigma(t))$ and its derivatives. Sampling
# $x_0\sim\mathcal N(0,I)$ and $x_1\sim p_\text{data}$ gives a point on the path and its
# *conditional velocity*
#
# $$x_t=\alpha(t)\,x_1+\sigma(t)\,x_0,\qquad \frac{d x_t}{dt}=\dot\alpha(t)\,x_1+\dot\sigma(t)\,x_0 .$$
#
# Each path checks its boundary values when it is built. Not every path reaches them
# exactly: DDPM's linear-β schedule stops at $\alpha(0)=\sqrt{\bar\alpha_T}\approx0.0066$,
# and the VE path keeps $\alpha\equiv1$ while $\sigma$ falls from $\sigma_\max$ to
# $\sigma_\min$, so its source is $\mathcal N(0,\sigma_\max^2 I)$.

# %%
show_source(P.VPLinearBetaPath)

# %%
paths = {"linear": P.LinearPath(), "vp_cosine": P.VPCosinePath(),
         "vp_linear": P.VPLinearBetaPath(), "ve": P.VEPath(sigma_max=50.0)}
for name, p in paths.items():
    print(f"{name:10s} boundary (alpha0, sigma0, alpha1, sigma1) = "
          f"{tuple(round(b, 4) for b in p.boundary)}, tolerance {p.tol:g}")

# %%
t = torch.linspace(0, 1, 401, dtype=torch.float64)[1:-1]
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
for name, p in paths.items():
    a, s = p.alpha(t), p.sigma(t)
    axes[0].plot(t, a, label=name)
    axes[1].plot(t, s / s.max(), label=name)
    axes[2].plot(t, torch.log(a**2 / s**2), label=name)
axes[0].set_title(r"$\alpha(t)$ (multiplies the data)")
axes[1].set_title(r"$\sigma(t)/\max\sigma$ (multiplies the source)")
axes[2].set_title(r"log-SNR $\log\alpha^2/\sigma^2$")
for ax in axes:
    ax.set_xlabel("t")
axes[2].legend(fontsize="small")
fig.tight_layout()

# %% [markdown]
# The log-SNR plot is the useful one: every Gaussian path is a monotone increasing
# log-SNR curve, and two paths with the same log-SNR range differ only by a
# re-parametrisation of time and a rescaling of $x$ (Kingma et al., 2021). The VE
# path spans the widest range; the linear path reaches $+\infty$ at $t=1$ and
# $-\infty$ at $t=0$.

# %% [markdown]
# ## Four predictions, one object
#
# A network evaluated at $(x_t, t)$ can predict the velocity $v$, the data
# $\hat x_1=\mathbb E[x_1\mid x_t]$, the noise $\hat\varepsilon=\mathbb E[x_0\mid x_t]$ or
# the score $\nabla\log p_t(x_t)$. On a path they are linked by
#
# $$x_t=\alpha\hat x_1+\sigma\hat\varepsilon,\qquad v=\dot\alpha\hat x_1+\dot\sigma\hat\varepsilon,
# \qquad \nabla\log p_t(x_t)=-\hat\varepsilon/\sigma ,$$
#
# a $2\times2$ linear system, so each one gives the others exactly (the score and
# $\varepsilon$ only when the source is $\mathcal N(0,I)$). For a Gaussian target
# $\mathcal N(\mu,\Sigma)$ all four are known in closed form
# ({py:mod}`minigen.eval.gaussian`), so we can check the conversions against the truth.

# %%
show_source(P.GaussianPath.convert)

# %%
target = GaussianTarget(torch.tensor([2.0, -1.0]), torch.tensor([[1.0, 0.6], [0.6, 0.5]]))
g = torch.Generator().manual_seed(seed)
conv_err = {}
for name, p in paths.items():
    tt = (0.02 + 0.96 * torch.rand(n_check, generator=g)).double()
    xt = target.sample(n_check, g) * p.alpha(tt)[:, None] + p.sigma(tt)[:, None] * torch.randn(
        n_check, 2, generator=g, dtype=torch.float64)
    truth = {"velocity": target.velocity(p, xt, tt), "x1": target.x1_mean(p, xt, tt),
             "epsilon": target.epsilon_mean(p, xt, tt), "score": target.score(p, xt, tt)}
    worst = 0.0
    for src in truth:
        for dst in truth:
            got = p.convert(truth[src], xt, tt, src, dst)
            rel = ((got - truth[dst]).norm(dim=1) / truth[dst].norm(dim=1).clamp_min(1e-3)).max()
            worst = max(worst, float(rel))
    conv_err[name] = worst
    print(f"{name:10s} worst relative error over 16 conversions: {worst:.1e}")

# %% [markdown]
# A prediction of one kind converts into every other kind to float64 rounding. Where
# the source is not Gaussian (say 8gaussians → moons in chapter 01) there is no
# $\varepsilon$ or score, and the path says so:

# %%
try:
    P.LinearPath(source_is_gaussian=False).score_from_epsilon(xt[:2], xt[:2], tt[:2])
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## The marginal velocity moves the source onto the data
#
# Integrating the exact marginal velocity $u_t$ of any of these paths from $t=0$ to
# $t=1$ carries $\mathcal N(0,I)$ (or $\mathcal N(0,\sigma_\max^2 I)$ for VE) onto
# $\mathcal N(\mu,\Sigma)$: the four paths are four schedules for the same transport
# problem, with different trajectories. We check the mean and covariance of the
# pushed-forward samples (RK4, 200 steps).

# %%
mean_err, cov_err = {}, {}
for name, p in paths.items():
    x0 = p.prior_sample((n_check, 2), g).double()
    lo, hi = p.t_min, min(p.t_max, 1 - 1e-4)
    # integrate on [0, hi]; the VP linear-beta velocity is singular at t = 1
    x1 = integrate(lambda x, t, p=p: target.velocity(p, x, t), x0, "rk4", 200, lo, hi).x
    mean_err[name] = float((x1.mean(0) - target.mu).norm())
    cov_err[name] = float((torch.cov(x1.T) - target.cov).norm())
    print(f"{name:10s} |mean - mu| = {mean_err[name]:.3f}   |cov - Sigma|_F = {cov_err[name]:.3f}")

# %% [markdown]
# The errors are at the level of the Monte Carlo noise of the sample mean and covariance
# (about $1/\sqrt{n}$), except that the VE path starts from
# $\mathcal N(0,\sigma_\max^2)$ rather than from the exact $t=0$ marginal
# $\mathcal N(\mu,\Sigma+\sigma_\max^2 I)$, and DDPM's schedule starts at
# $\alpha(0)\approx0.0066$: small, stated approximations, not bugs.

# %% [markdown]
# ## Time conventions across papers
#
# | source | time runs | noise at | path | map onto minigen |
# |---|---|---|---|---|
# | DDPM (Ho et al., 2020) | $t=1\dots T$, discrete | $t=T$ | $x_t=\sqrt{\bar\alpha_t}\,x_0+\sqrt{1-\bar\alpha_t}\,\varepsilon$ | $t_\text{ours}=1-t/T$, $x_1=x_0^\text{DDPM}$, $\alpha=\sqrt{\bar\alpha}$, $\sigma=\sqrt{1-\bar\alpha}$ |
# | Score SDE (Song et al., 2021) | $t\in[0,1]$ | $t=1$ | VP: as DDPM; VE: $x_t=x_0+\sigma(t)z$ | $t_\text{ours}=1-t$; VE: $\alpha\equiv1$ |
# | Rectified flow (Liu et al., 2023) | $t\in[0,1]$ | $t=0$ | $X_t=tX_1+(1-t)X_0$ | identical |
# | minRF (cloneofsimo) | $t\in[0,1]$ | $t=1$ | $z_t=(1-t)x+t\varepsilon$, $v=\varepsilon-x$ | $t_\text{ours}=1-t$, $v_\text{ours}=-v$ |
# | MeanFlow (Geng et al., 2025) | $t\in[0,1]$, $r\le t$ | $t=1$ | $z_t=(1-t)x+t\varepsilon$, average velocity $u(z_t,r,t)$ | $t_\text{ours}=1-t$, $r_\text{ours}=1-r$, $u_\text{ours}=-u$ |
# | Meta `flow_matching` | $t\in[0,1]$ | $t=0$ | $X_t=\alpha_tX_1+\sigma_tX_0$ | identical (our notation follows it) |
# | torchcfm (Tong et al., 2024) | $t\in[0,1]$ | $t=0$ | $x_t=tx_1+(1-t)x_0+\sigma_t z$ | identical; $\sigma_t$ is our $\gamma(t)$ |
# | Stochastic interpolants (Albergo et al., 2023) | $t\in[0,1]$ | $t=0$ | $x_t=\alpha(t)x_0+\beta(t)x_1+\gamma(t)z$ | $\alpha_\text{ours}=\beta$, $\sigma_\text{ours}=\alpha_\text{SI}$ |
#
# Later chapters that follow a paper with another convention state the map once and
# then use ours.

# %%
metrics = {}
for name in paths:
    metrics[f"conversion_rel_err_{name}"] = metric(conv_err[name], "", "lower")
    metrics[f"pushforward_mean_err_{name}"] = metric(mean_err[name], "", "lower")
    metrics[f"pushforward_cov_err_{name}"] = metric(cov_err[name], "", "lower")
path = record("00_unified_picture", metrics, mode="quick" if quick else "full", seed=seed,
              wall_s=time.perf_counter() - t_start)
assert max(conv_err.values()) < 1e-6, conv_err
assert max(mean_err[k] for k in ("linear", "vp_cosine", "vp_linear")) < 0.1, mean_err

# %%
# NBVAL_IGNORE_OUTPUT
ResultsTable(metrics)

# %% [markdown]
# ## Summary
#
# * A Gaussian path $x_t=\alpha x_1+\sigma x_0$ is all that DDPM, score SDEs, flow matching
#   and rectified flow need to agree on; they differ in the schedule, the coupling, the
#   prediction type and the solver.
# * Velocity, $x_1$, $\varepsilon$ and score predictions are exact linear transforms of
#   each other at fixed $(x_t,t)$; $\varepsilon$ and score need a Gaussian source.
# * The marginal velocity of every path carries the source onto the data; only the
#   trajectories differ.
#
# ## Exercises
#
# 1. Show that two paths with the same log-SNR curve, after re-timing, produce the same
#    $\hat x_1$ at matching points. Check it numerically with `VPCosinePath` and a
#    rescaled `LinearPath`.
# 2. Derive `x1_from_velocity` from the $2\times2$ system above and find the $t$ where it is
#    ill-conditioned for the VP linear-β path.
# 3. For the Gaussian target, compute the straightness of the marginal-velocity
#    trajectories for each path with `minigen.eval.metrics.straightness`. Which path is
#    straightest, and why is none of them exactly straight?
