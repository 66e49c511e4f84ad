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
# # 06 · Poisson flows (PFGM++)
#
# Poisson flow generative models (Xu et al., 2022) treat data points as electric charges: in a
# space with extra dimensions their field lines leave the data and spread out uniformly to
# infinity, so following a field line backwards carries a sample from a large hemisphere to
# the data. PFGM++ (Xu, Liu, Tian, Tegmark & Jaakkola, 2023) adds $D$ extra dimensions
# instead of one and shows that the resulting model is a diffusion model with a
# **heavy-tailed perturbation kernel**: $D=1$ is the original PFGM, $D\to\infty$ is the
# Gaussian kernel of EDM (Karras et al., 2022), and the values in between trade robustness
# (heavy tails forgive errors) against ease of training. This chapter derives the kernel, its
# radius sampler and its ODE, trains EDM-style denoisers for several $D$ on 2D data and on
# 8×8 digits, and measures the robustness claim with noise added to the sampler and with few
# solver steps.
#
# ## The paper's variables in minigen's convention
#
# PFGM++ writes the clean data point $y\in\mathbb R^N$, the perturbed point $x$ and the
# augmented radius $r$ (the distance from the data hyperplane in the $D$ extra dimensions);
# sampling runs $r$ from $r_\max$ down to $\approx0$. With the alignment $r=\sigma\sqrt D$
# everything can be written in EDM's $\sigma$, and minigen's time indexes EDM's $\sigma$ grid.
#
# | | PFGM++ / EDM | minigen |
# |---|---|---|
# | clean data | $y$ | $x_1$ (the data end) |
# | perturbed point | $x=y+R\,u$ | $x_t$, with $\alpha\equiv1$ (a VE-like path with a non-Gaussian source) |
# | noise level | augmented radius $r$, or $\sigma=r/\sqrt D$ (§4) | $\sigma(t)$ on EDM's grid |
# | time | $r$ (or $\sigma$) from $r_\max$ to 0 | $t\in[0,1]$: $t=0$ is $\sigma_\max$ (noise), $t=1$ is $\sigma_\min$ (data) |
# | grid | $\sigma_i=(\sigma_\max^{1/\rho}+\tfrac{i}{K}(\sigma_\min^{1/\rho}-\sigma_\max^{1/\rho}))^\rho$, $\rho=7$ | `edm_sigma(t)` with $t=i/K$ |
# | ODE | $dx/dr=(x-\mathbb E[y\mid x])/r$ | $dx/d\sigma=(x-D_\theta(x,\sigma))/\sigma$, stepped in $\sigma$ |
#
# ## The kernel: a charge seen from $D$ extra dimensions
#
# Put the data in $\mathbb R^N$ and add $D$ dimensions. A unit charge at $(y,0)$ has, in
# $N+D$ dimensions, a potential whose field at the point $(x,z)$ with $\|z\|=r$ has flux
# density proportional to $1/(\|x-y\|^2+r^2)^{(N+D)/2}$. Normalising over $x\in\mathbb R^N$
# gives the **perturbation kernel** (PFGM++, §3)
#
# $$p_r(x\mid y)=\frac{\Gamma(\frac{N+D}2)}{\pi^{N/2}\,\Gamma(\frac D2)}\;
#   \frac{r^D}{(\|x-y\|^2+r^2)^{\frac{N+D}2}} ,$$
#
# which is a multivariate Student $t$ with $D$ degrees of freedom and scale $r/\sqrt D$.
#
# **Sampling it.** The kernel depends on $x$ only through $R=\|x-y\|$, so $x=y+R\,u$ with $u$
# uniform on the unit sphere and $R$ with density $\propto R^{N-1}/(R^2+r^2)^{(N+D)/2}$ (the
# $R^{N-1}$ is the area of the sphere of radius $R$). Substitute $B=R^2/(R^2+r^2)$: then
# $R^2=r^2B/(1-B)$, $R^2+r^2=r^2/(1-B)$, $dR\propto B^{-1/2}(1-B)^{-3/2}dB$, and the density
# of $B$ becomes
#
# $$B^{\frac{N-1}2}(1-B)^{-\frac{N-1}2}\cdot(1-B)^{\frac{N+D}2}\cdot B^{-\frac12}(1-B)^{-\frac32}
#   =B^{\frac N2-1}(1-B)^{\frac D2-1},$$
#
# so $B\sim\mathrm{Beta}(\frac N2,\frac D2)$ and $R=r\sqrt{B/(1-B)}$ (PFGM++, App. B).
#
# **Moments and the Gaussian limit.** $B/(1-B)$ is beta-prime with mean $\frac{N/2}{D/2-1}$, so
#
# $$\mathbb E\|x-y\|^2=r^2\frac{N}{D-2}\quad(D>2),\qquad\text{infinite for }D\le2 .$$
#
# With the alignment $r=\sigma\sqrt D$ this is $N\sigma^2\,D/(D-2)\to N\sigma^2$, the Gaussian's;
# and indeed $(1+\|x-y\|^2/(D\sigma^2))^{-(N+D)/2}\to e^{-\|x-y\|^2/2\sigma^2}$, so
# $p_{\sigma\sqrt D}(\cdot\mid y)\to\mathcal N(y,\sigma^2I)$ as $D\to\infty$ (§4).
#
# **What $D$ does, relative to $N$.** Writing $B/(1-B)=\chi^2_N/\chi^2_D$ (two independent
# chi-squares), $\log R^2=\log\sigma^2+\log\chi^2_N-\log(\chi^2_D/D)$ has variance
# $\approx 2/N+2/D$. The Gaussian's own spread of radii is $2/N$; the extra $2/D$ matters only
# when $D$ is not much larger than $N$. In images ($N=3072$ for CIFAR-10) the Gaussian's
# radii are concentrated on a thin shell and $D=128$ already spreads them widely; in 2D
# ($N=2$) the Gaussian's radii are already spread, and only $D$ of a few changes anything.
# This decides which $D$ we sweep below.

# %% tags=["parameters"]
from minigen.workbook.record import parameter_defaults, quick_from_env

quick = quick_from_env()  # True under make test and make lab (MINIGEN_QUICK); write False for a full run
seed = 0
steps_2d = 2000  # training steps per 2D model
seeds_2d = 3  # training seeds per D (the error bars)
batch_2d = 256
n_eval = 1000  # 2D samples for the exact W2²
steps_digits = 800  # U-Net training steps per D on 8x8 digits
seeds_digits = 2  # U-Net training seeds per D (the spread between them)
batch_digits = 64
n_digits = 359  # generated digits per FD (the size of the held-out split)
ema_decay = 0.995
defaults = parameter_defaults(globals())  # before papermill's injected parameters

# %%
import math
import time

import matplotlib.pyplot as plt
import torch

from minigen.data import images, toy2d
from minigen.diffusion import pfgmpp as P
from minigen.eval import fd
from minigen.eval.metrics import mean_and_std, wasserstein2_squared
from minigen.nets.mlp import MLP
from minigen.nets.unet import UNet
from minigen.train import train
from minigen.workbook.record import ResultsTable, apply_quick, key_number, metric, record
from minigen.workbook.viz import scatter, show_source

t_start = time.perf_counter()
mode = "quick" if quick else "full"
if quick:
    apply_quick(globals(), defaults, steps_2d=300, seeds_2d=1, n_eval=500, steps_digits=5, n_digits=64,
                ema_decay=0.98, seeds_digits=1)
INF = math.inf
D_2D = [2, 4, 16, INF] if not quick else [2, 4, INF]  # N = 2: only small D differs from the Gaussian
D_DIGITS = [4, 16, INF] if not quick else [16, INF]  # N = 64: D/N = 1/16, 1/4, and the Gaussian
ALPHAS = [0.0, 0.1, 0.2, 0.4] if not quick else [0.0, 0.2, 0.4]  # state noise alpha * sigma_t added after every step (PFGM++ §6)
STEPS_2D = [3, 5, 9, 18] if not quick else [5, 9, 18]  # Heun steps (NFE = 2 steps)
ALPHAS_DIGITS = [0.0, 0.2, 0.5] if not quick else [0.0, 0.5]
name = lambda D: "Dinf" if math.isinf(D) else f"D{D:g}"
print(f"{mode}: 2D: D in {[name(D) for D in D_2D]}, {seeds_2d} seeds x {steps_2d} steps; "
      f"digits: D in {[name(D) for D in D_DIGITS]}, {seeds_digits} seed(s) x {steps_digits} steps")

# %% [markdown]
# **What runs.** Full mode trains, on the checkerboard ($N=2$), an EDM denoiser (3 × 128 SiLU
# MLP, Adam 1e-3, batch 256, EMA 0.995) for each $D\in\{2,4,16,\infty\}$ and each of 3 seeds,
# 2000 steps each; and on sklearn's 8×8 digits ($N=64$) a U-Net of base width 16 for each
# $D\in\{4,16,\infty\}$ and each of 2 seeds, 800 steps at batch 64. Quick mode (the tests)
# trains the 2D models for $D\in\{2,4,\infty\}$ for 300 steps with one seed, and the digit
# U-Nets for 5 steps (an untrained code path) for $D\in\{16,\infty\}$.
#
# ## Checking the sampler against the closed forms
#
# The sampler draws $B\sim\mathrm{Beta}(N/2,D/2)$ and a direction; its mean squared radius
# must match $N\sigma^2D/(D-2)$ and tend to $N\sigma^2$.

# %%
show_source(P.perturbation)

# %%
g = torch.Generator().manual_seed(seed)
sigma = 1.0
moment_errs = []
print(f"{'N':>3} {'D':>6} {'E|x-y|² sampled':>16} {'closed form':>12} {'N sigma²':>9}")
for n in (2, 64):
    for D in (8, 16, 128, 1e4, INF):
        e = P.perturbation((30_000 if quick else 100_000, n), sigma, D, g, torch.float64)
        emp, exact = e.pow(2).sum(1).mean().item(), P.expected_squared_radius(n, sigma, D)
        moment_errs.append(abs(emp / exact - 1))
        print(f"{n:3d} {name(D):>6} {emp:16.3f} {exact:12.3f} {n * sigma**2:9.1f}")
print(f"largest relative error: {max(moment_errs):.4f}")

# %% [markdown]
# The figure shows where the radius lives, relative to the Gaussian's typical radius
# $\sigma\sqrt N$: histograms of sampled radii, and the exact density of $\log_{10}R$ from
# the kernel, $p(R)=\frac{2\pi^{N/2}}{\Gamma(N/2)}R^{N-1}p_r(y+Ru\mid y)$, as lines. In 2D
# the Gaussian already spans two decades of radius and $D=16$ is hard to tell apart from it;
# at $N=64$ the Gaussian is a thin shell and $D=4$ or $16$ spreads it over decades.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for ax, n in zip(axes, (2, 64)):
    u = torch.logspace(-2.5, 2.5, 400, dtype=torch.float64)  # R / (sigma sqrt N)
    R = u * math.sqrt(n)
    pts = torch.zeros(len(R), n, dtype=torch.float64)
    pts[:, 0] = R
    log_area = math.log(2) + n / 2 * math.log(math.pi) - math.lgamma(n / 2)
    for i, D in enumerate((2, 4, 16, INF)):
        e = P.perturbation((5_000 if quick else 40_000, n), sigma, D, g, torch.float64)
        lr = torch.log10(e.norm(dim=1) / math.sqrt(n))
        ax.hist(lr.numpy(), bins=120, range=(-2.5, 2.5), density=True, alpha=0.3, color=f"C{i}",
                histtype="stepfilled")
        logp = log_area + (n - 1) * torch.log(R) + P.kernel_log_prob(pts, torch.zeros(1, n, dtype=torch.float64),
                                                                      sigma, D)
        ax.plot(torch.log10(u), (logp.exp() * R * math.log(10)).numpy(), color=f"C{i}", label=name(D))
    ax.set_xlabel(r"$\log_{10}\,R/(\sigma\sqrt{N})$")
    ax.set_title(f"N = {n}: radius of x - y, r = sigma sqrt(D)", fontsize="medium")
    ax.legend(fontsize="small")
fig.tight_layout()

# %% [markdown]
# ## The ODE: field lines are the probability flow
#
# Sampling follows the field backwards. PFGM++ (§4) shows that with $r=\sigma\sqrt D$ the field
# line ODE is, for every $D$,
#
# $$\frac{dx}{d\sigma}=\frac{x-\mathbb E[y\mid x]}{\sigma}=\frac{x-D(x,\sigma)}{\sigma},$$
#
# exactly EDM's ODE with its denoiser $D(x,\sigma)$ — only the posterior $p(y\mid x)\propto
# p_r(x\mid y)\,p(y)$ that defines the denoiser changes with $D$. Why it transports the
# marginals $p_\sigma(x)=\int p_{\sigma\sqrt D}(x\mid y)p(y)dy$: for one charge the field
# $(x-y)/\sigma$ satisfies the continuity equation
# $\partial_\sigma p+\nabla_x\!\cdot(p\,(x-y)/\sigma)=0$. With $k=p_{\sigma\sqrt D}(x\mid y)$ and
# $\rho=\|x-y\|$, $\partial_\sigma k=\frac k\sigma\big(D-(N+D)\frac{\sigma^2D}{\rho^2+\sigma^2D}\big)$ and
# $\nabla\!\cdot(k(x-y)/\sigma)=\frac k\sigma\big(N-(N+D)\frac{\rho^2}{\rho^2+\sigma^2D}\big)$,
# which sum to zero; averaging over $y$ with the posterior gives the marginal field
# (`test_kernel_obeys_the_sigma_ode_continuity_equation` checks the identity by autograd).
#
# We step in $\sigma$ with `solvers.heun_step` (Karras et al., 2022, Alg. 1 without stochastic
# churn): far from the data $x-D$ grows like $\sigma$, so the field is nearly constant in
# $\sigma$ and a few large steps stay accurate. The prior is the kernel itself around the
# origin at $\sigma_\max$, $p_{r_\max}(x\mid0)$, as in the paper (the data are negligible next
# to $r_\max$).

# %%
show_source(P.sample)

# %% [markdown]
# With the exact denoiser of a small data set (the posterior mean under the kernel, available
# in closed form for every $D$) the ODE must land every sample on a data point. The field
# lines of a heavy-tailed kernel ($D=2$) start much further out and come in from every
# direction; the Gaussian's ($D=\infty$) start on a shell.

# %%
pts5 = torch.tensor([[-2.0, -1.0], [0.0, 2.0], [2.0, -1.5], [2.5, 1.5], [-1.0, 0.5]], dtype=torch.float64)
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
exact_landing = {}
for ax, D in zip(axes, (2, INF)):
    x0 = P.prior_sample((300, 2), 20.0, D, torch.Generator().manual_seed(seed)).double()
    sol = P.sample(lambda x, s, D=D: P.exact_denoiser(x, pts5, s, D), x0, steps=30, sigma_min=0.01,
                   sigma_max=20.0, return_trajectory=True)
    tr = sol.trajectory.numpy()
    ax.plot(tr[:, :, 0], tr[:, :, 1], lw=0.4, alpha=0.4, color="C0")
    ax.scatter(pts5[:, 0], pts5[:, 1], color="C3", zorder=3, s=20)
    exact_landing[D] = torch.cdist(sol.x, pts5).min(1).values.median().item()
    ax.set_xlim(-8, 8)
    ax.set_ylim(-8, 8)
    ax.set_aspect("equal")
    ax.set_title(f"{name(D)}: exact-denoiser ODE from sigma = 20", fontsize="medium")
fig.tight_layout()
print("median distance of the ODE's end points to the nearest data point: "
      + ", ".join(f"{name(D)} {v:.4f}" for D, v in exact_landing.items()))

# %% [markdown]
# ## Training: EDM's denoiser with the PFGM++ kernel
#
# Training is EDM's, with one change: the noisy input is drawn from $p_{\sigma\sqrt D}(\cdot\mid y)$
# instead of $\mathcal N(y,\sigma^2I)$ (PFGM++, §4). The network $F_\theta$ sits
# inside EDM's preconditioning, $D_\theta(x,\sigma)=c_\text{skip}x+c_\text{out}F_\theta(c_\text{in}x,
# \tfrac14\ln\sigma)$, $\ln\sigma\sim\mathcal N(-1.2,1.2^2)$, and the loss is
# $\lambda(\sigma)\|D_\theta(x,\sigma)-y\|^2$ with $\lambda=1/c_\text{out}^2$ (Karras et al., 2022,
# Table 1). EDM's constants assume data of standard deviation $\sigma_\text{data}=0.5$; we
# rescale the checkerboard to that (and back for the metrics) and use $\sigma_\min=0.002$,
# $\sigma_\max=80$, $\rho=7$ as published.

# %%
show_source(P.PFGMppLoss)

# %%
DATA2D = "checkerboard"
ref = toy2d.sample_2d(DATA2D, 20_000, torch.Generator().manual_seed(seed + 1))
scale = 0.5 / ref.std().item()  # EDM's sigma_data = 0.5
SMIN, SMAX = 0.002, 80.0
models_2d, ms_2d = {}, {}
for D in D_2D:
    for s in range(seeds_2d):
        torch.manual_seed(seed + s)
        den = P.EDMDenoiser(MLP(2, width=128, depth=3, activation="silu"), sigma_data=0.5)
        batch = lambda gen: (toy2d.sample_2d(DATA2D, batch_2d, gen) * scale,)
        res = train(den, P.PFGMppLoss(D=D).loss, batch, steps=steps_2d, lr=1e-3, seed=seed + s,
                    ema_decay=ema_decay, progress=False, device="cpu")
        models_2d[D, s] = res.ema
        ms_2d[D, s] = res.ms_per_step

# %%
# NBVAL_IGNORE_OUTPUT
# wall-clock times vary run to run; everything else in this notebook is deterministic
for D in D_2D:
    print(f"{name(D):5s} {sum(ms_2d[D, s] for s in range(seeds_2d)) / seeds_2d:6.2f} ms/step")


# %%
def sample_2d_model(model, D, steps=18, alpha=0.0, sample_seed=0, n=n_eval):
    """Prior draw and Heun ODE for one 2D model, back in data units: (n, 2)."""
    gen = torch.Generator().manual_seed(10_000 + sample_seed)
    x0 = P.prior_sample((n, 2), SMAX, D, gen)
    return P.sample(model, x0, steps=steps, sigma_min=SMIN, sigma_max=SMAX, noise=alpha, generator=gen).x / scale


target = toy2d.sample_2d(DATA2D, n_eval, torch.Generator().manual_seed(seed + 2))
floor_2d = wasserstein2_squared(toy2d.sample_2d(DATA2D, n_eval, torch.Generator().manual_seed(seed + 3)), target)
on_board = lambda x: (toy2d.checkerboard_log_density(x) > -math.inf).double().mean().item()
fig, axes = plt.subplots(1, len(D_2D) + 1, figsize=(2.6 * (len(D_2D) + 1), 2.8))
scatter(axes[0], target, title="data", s=2)
for ax, D in zip(axes[1:], D_2D):
    x = sample_2d_model(models_2d[D, 0], D)
    scatter(ax, x, title=f"{name(D)}: W2² {wasserstein2_squared(x, target):.3f}\non board {on_board(x):.2f}", s=2)
fig.tight_layout()
print(f"two fresh data samples: W2² = {floor_2d:.4f}")

# %% [markdown]
# ## Robustness: noise in the sampler and fewer steps
#
# PFGM++'s §6 tests how well each $D$ tolerates errors in the sampling trajectory: Gaussian
# noise $\alpha\,\sigma_{t}\,n$ is added to the state after every step, and separately the
# number of steps is cut. Its finding is that smaller $D$ (heavier tails) degrades less, and
# $D=\infty$ (diffusion) most. We measure the exact $W_2^2$ to fresh data for every $D$,
# $\alpha$ and training seed (mean ± standard deviation over seeds), and the share of samples
# on the checkerboard's black cells (a measure that, unlike $W_2^2$, ignores how far an
# outlier lies).

# %%
w2, board = {}, {}
for D in D_2D:
    for s in range(seeds_2d):
        for a in ALPHAS:
            x = sample_2d_model(models_2d[D, s], D, alpha=a, sample_seed=s)
            w2[D, "alpha", a, s], board[D, "alpha", a, s] = wasserstein2_squared(x, target), on_board(x)
        for k in STEPS_2D:
            if k == 18:  # the same samples as alpha = 0
                w2[D, "steps", k, s], board[D, "steps", k, s] = w2[D, "alpha", 0.0, s], board[D, "alpha", 0.0, s]
                continue
            x = sample_2d_model(models_2d[D, s], D, steps=k, sample_seed=s)
            w2[D, "steps", k, s], board[D, "steps", k, s] = wasserstein2_squared(x, target), on_board(x)


def mean_std(table, D, kind, v):
    return mean_and_std(torch.tensor([table[D, kind, v, s] for s in range(seeds_2d)], dtype=torch.float64))


print("W2² to the data (mean ± std over seeds) with state noise alpha sigma_t, 18 Heun steps:")
print("  D     " + "".join(f"{'alpha=' + str(a):>18s}" for a in ALPHAS) + f"{'increase at ' + str(ALPHAS[-1]):>18s}")
for D in D_2D:
    cells = [mean_std(w2, D, "alpha", a) for a in ALPHAS]
    print(f"  {name(D):5s} " + "".join(f"{m:10.3f} ± {sd:5.3f}" for m, sd in cells)
          + f"{cells[-1][0] - cells[0][0]:18.3f}")
print("W2² against the number of Heun steps (NFE = 2 steps), no noise:")
print("  D     " + "".join(f"{'NFE=' + str(2 * k):>18s}" for k in STEPS_2D))
for D in D_2D:
    print(f"  {name(D):5s} " + "".join("{:10.3f} ± {:5.3f}".format(*mean_std(w2, D, "steps", k)) for k in STEPS_2D))
print("share of samples on the board (mean over seeds):")
for D in D_2D:
    print(f"  {name(D):5s} " + "".join(f"  alpha={a}: {mean_std(board, D, 'alpha', a)[0]:.3f}" for a in ALPHAS)
          + f"  NFE={2 * STEPS_2D[0]}: {mean_std(board, D, 'steps', STEPS_2D[0])[0]:.3f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for i, D in enumerate(D_2D):
    for ax, kind, xs, table in ((axes[0], "alpha", ALPHAS, w2), (axes[1], "steps", STEPS_2D, w2),
                                (axes[2], "alpha", ALPHAS, board)):
        ms = [mean_std(table, D, kind, v) for v in xs]
        xv = [2 * v for v in xs] if kind == "steps" else xs
        ax.errorbar(xv, [m for m, _ in ms], yerr=[sd for _, sd in ms], marker="o", capsize=3,
                    color=f"C{i}", label=name(D))
axes[0].set(xlabel=r"state noise $\alpha$", ylabel="W2² to data", title="noise in the sampler")
axes[1].set(xlabel="NFE", ylabel="W2² to data", xscale="log", yscale="log", title="fewer steps")
axes[2].set(xlabel=r"state noise $\alpha$", ylabel="share on the board", title="samples on the black cells")
for ax in axes:
    ax.axhline(floor_2d, color="gray", ls=":", lw=1) if ax is not axes[2] else None
    ax.legend(fontsize="small")
fig.tight_layout()

# %% [markdown]
# **What reproduces, and what does not (2D).** In the full run (3 seeds × 2000 steps) the
# noise-free $W_2^2$ is about the same for $D=4$, $16$ and $\infty$ (0.31, 0.29, 0.26; the
# sampling floor is 0.10), and the state noise raises it less the smaller $D$ is: at
# $\alpha=0.4$ the increase was 0.71 for $D=4$, 0.94 for $D=16$ and 1.04 for $D=\infty$, so
# that $D=4$ ends best in absolute terms (1.01 ± 0.03 against 1.30 ± 0.13), and the share of
# samples on the board falls least for $D=4$ — the paper's ordering. The other side of the
# trade-off shows at $D=2$, whose kernel has infinite variance in 2D: its prior at
# $\sigma_\max=80$ puts points at radii the network never sees in training (EDM's
# $\ln\sigma\sim\mathcal N(-1.2,1.2^2)$ rarely exceeds $\sigma=10$), a few samples end far
# from the data, and $W_2^2$ is an order of magnitude worse (3.7 ± 2.0) even though its
# increase under noise is the smallest. Cutting the number of steps did **not** favour small
# $D$ here: at 10 NFE $D=\infty$ was best (4.2 against 5.7 for $D=4$) — the paper's
# robustness to larger step sizes does not reproduce on this 2D set. The quick run (300
# steps, one seed) shows the same ordering under noise with noisier numbers.

# %% [markdown]
# ## 8×8 digits: $N=64$
#
# In 64 dimensions the Gaussian's radii concentrate (relative spread $\sqrt{2/64}\approx0.18$ in
# $\log R^2$), and $D=4$ and $D=16$ spread them far more, the regime of the paper's image
# experiments ($D/N$ from 1/16 to 1/4 here; 64/3072 to 2048/3072 there). A U-Net of base
# width 16 (`nets.UNet`) is trained per $D$ on sklearn's digits scaled to $[-1,1]$; we
# measure the Fréchet distance of MNIST-classifier features (`fd.features` upsamples 8×8 to
# 28×28) between generated digits and the held-out split, next to the real-vs-real floor:
# the same distance between as many training digits and the held-out ones.

# %%
(dg_tr, _), (dg_te, _) = images.load_digits_8x8()
x_tr = images.to_unit_interval(torch.as_tensor(dg_tr), 17)
x_te = images.to_unit_interval(torch.as_tensor(dg_te), 17)
clf = fd.load_classifier(verbose=False)
feat_te = fd.features(x_te, clf)
fd_floor = fd.frechet_distance(
    fd.features(x_tr[torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))[:len(x_te)]], clf),
    feat_te)
models_dg, ms_dg = {}, {}
for D in D_DIGITS:
    for s in range(seeds_digits):
        torch.manual_seed(seed + s)
        den = P.EDMDenoiser(UNet(1, base=16, mults=(1, 2)), sigma_data=0.5)
        batch = lambda gen: (x_tr[torch.randint(len(x_tr), (batch_digits,), generator=gen)],)
        res = train(den, P.PFGMppLoss(D=D).loss, batch, steps=steps_digits, lr=1e-3, seed=seed + s,
                    ema_decay=ema_decay, progress=False, device="cpu")
        models_dg[D, s], ms_dg[D, s] = res.ema, res.ms_per_step
print(f"real-vs-real floor (train vs held-out, n = {len(x_te)}): FD = {fd_floor:.2f}")

# %%
# NBVAL_IGNORE_OUTPUT
for D in D_DIGITS:
    print(f"{name(D):5s} U-Net {sum(ms_dg[D, s] for s in range(seeds_digits)) / seeds_digits:7.1f} ms/step")


# %%
def sample_digits(model, D, steps=18, alpha=0.0, sample_seed=0, n=n_digits):
    gen = torch.Generator().manual_seed(20_000 + sample_seed)
    x0 = P.prior_sample((n, 1, 8, 8), SMAX, D, gen)
    x = P.sample(model, x0, steps=steps, sigma_min=SMIN, sigma_max=SMAX, noise=alpha, generator=gen).x
    return x.clamp(-1, 1)


DIGIT_STEPS = 18 if not quick else 3
DIGIT_FEW = 5 if not quick else 2
fd_dg, grids = {}, {}  # (D, alpha, training seed, sampling seed) -> FD
for D in D_DIGITS:
    for s in range(seeds_digits):
        for a in ALPHAS_DIGITS:
            for r in range(2):
                x = sample_digits(models_dg[D, s], D, steps=DIGIT_STEPS, alpha=a, sample_seed=10 * s + r)
                fd_dg[D, a, s, r] = fd.frechet_distance(fd.features(x, clf), feat_te)
                if a == 0 and s == 0 and r == 0:
                    grids[D] = x[:32]
        x = sample_digits(models_dg[D, s], D, steps=DIGIT_FEW, sample_seed=10 * s)
        fd_dg[D, "few", s, 0] = fd.frechet_distance(fd.features(x, clf), feat_te)
fd_seed = lambda D, a, s: (fd_dg[D, a, s, 0] + fd_dg[D, a, s, 1]) / 2  # mean of 2 sampling seeds
fd_mean = lambda D, a: sum(fd_seed(D, a, s) for s in range(seeds_digits)) / seeds_digits
fd_few = lambda D: sum(fd_dg[D, "few", s, 0] for s in range(seeds_digits)) / seeds_digits
print(f"FD to held-out digits: mean over {seeds_digits} training seed(s) [each the mean of 2 sampling "
      f"seeds]; floor {fd_floor:.2f}")
for D in D_DIGITS:
    print(f"  {name(D):5s} " + "".join(
        f"  alpha={a}: {fd_mean(D, a):6.2f} [{', '.join(f'{fd_seed(D, a, s):.2f}' for s in range(seeds_digits))}]"
        for a in ALPHAS_DIGITS) + f"  NFE={2 * DIGIT_FEW}: {fd_few(D):6.2f}")

# %%
fig, axes = plt.subplots(1, len(D_DIGITS) + 1, figsize=(3 * (len(D_DIGITS) + 1), 3))
show = [x_te[:32]] + [grids[D] for D in D_DIGITS]
titles = ["held-out digits"] + [f"{name(D)}, FD {fd_mean(D, 0.0):.1f}" for D in D_DIGITS]
for ax, imgs, title in zip(axes, show, titles):
    tiles = imgs.view(4, 8, 8, 8).permute(0, 2, 1, 3).reshape(32, 64)
    ax.imshow(tiles.numpy(), cmap="gray_r", vmin=-1, vmax=1)
    ax.set_title(title, fontsize="medium")
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# **Digits.** In the full run (800 U-Net steps, far from converged; 2 training seeds per $D$,
# each sampled with 2 seeds) every $D$ gets within a factor 2–2.3 of the real-vs-real floor
# (FD 6.2). Without noise the three are indistinguishable: FD 14.0 for $D=4$ (seeds 16.5 and
# 11.6), 13.2 for $D=16$ (16.2, 10.3) and 12.5 for $D=\infty$ (12.9, 12.1) — the spread between
# training seeds of a finite $D$ (5–6) is larger than the differences between the $D$. At 10
# NFE they are equally close again (27.0, 25.7, 25.3): fewer steps did not favour small $D$.
# Noise of $\alpha=0.2$ degrades none of them. At $\alpha=0.5$ the paper's ordering holds for
# both training seeds: the FD rose by 0.1 and 4.3 for $D=4$, 8.3 and 18.0 for $D=16$, and
# 27.2 and 28.8 for $D=\infty$ (means 16.2, 26.4 and 40.6) — the robustness gap between
# $D=4$ and $D=\infty$ is several times the spread between seeds.

# %% [markdown]
# ## Results

# %%
metrics = {"kernel_moment_rel_err_max": metric(max(moment_errs), "", "lower"),
           "w2sq_floor_2d": metric(floor_2d, "", "lower"),
           "fd_floor_digits": metric(fd_floor, "", "lower")}
for D, v in exact_landing.items():
    metrics[f"exact_ode_median_dist_{name(D)}"] = metric(v, "", "lower")
for D in D_2D:
    for a in ALPHAS:
        m, sd = mean_std(w2, D, "alpha", a)
        metrics[f"w2sq_2d_{name(D)}_alpha{key_number(a)}"] = metric(m, "", "lower")
        metrics[f"w2sq_2d_{name(D)}_alpha{key_number(a)}_std"] = metric(sd, "", "lower")
        metrics[f"on_board_2d_{name(D)}_alpha{key_number(a)}"] = metric(mean_std(board, D, "alpha", a)[0], "", "higher")
    metrics[f"w2sq_increase_2d_{name(D)}_alpha{key_number(ALPHAS[-1])}"] = metric(
        mean_std(w2, D, "alpha", ALPHAS[-1])[0] - mean_std(w2, D, "alpha", 0.0)[0], "", "lower")
    for k in STEPS_2D:
        metrics[f"w2sq_2d_{name(D)}_nfe{2 * k}"] = metric(mean_std(w2, D, "steps", k)[0], "", "lower")
    metrics[f"ms_per_step_2d_{name(D)}"] = metric(sum(ms_2d[D, s] for s in range(seeds_2d)) / seeds_2d, "ms", "lower")
for D in D_DIGITS:
    for a in ALPHAS_DIGITS:
        metrics[f"fd_digits_{name(D)}_alpha{key_number(a)}"] = metric(fd_mean(D, a), "", "lower")
        if seeds_digits > 1:
            vals = [fd_seed(D, a, s) for s in range(seeds_digits)]
            metrics[f"fd_digits_{name(D)}_alpha{key_number(a)}_seed_range"] = metric(max(vals) - min(vals), "", "lower")
    metrics[f"fd_ratio_digits_{name(D)}"] = metric(fd_mean(D, 0.0) / fd_floor, "x", "lower")
    metrics[f"fd_increase_digits_{name(D)}_alpha{key_number(ALPHAS_DIGITS[-1])}"] = metric(
        fd_mean(D, ALPHAS_DIGITS[-1]) - fd_mean(D, 0.0), "", "lower")
    for s in range(seeds_digits):
        metrics[f"fd_increase_digits_{name(D)}_alpha{key_number(ALPHAS_DIGITS[-1])}_seed{s}"] = metric(
            fd_seed(D, ALPHAS_DIGITS[-1], s) - fd_seed(D, 0.0, s), "", "lower")
    metrics[f"fd_digits_{name(D)}_nfe{2 * DIGIT_FEW}"] = metric(fd_few(D), "", "lower")
    metrics[f"ms_per_step_digits_{name(D)}"] = metric(
        sum(ms_dg[D, s] for s in range(seeds_digits)) / seeds_digits, "ms", "lower")
inc = lambda D: metrics[f"w2sq_increase_2d_{name(D)}_alpha{key_number(ALPHAS[-1])}"]["value"]
metrics[f"ratio_w2sq_increase_D4_over_Dinf_alpha{key_number(ALPHAS[-1])}"] = metric(inc(4) / inc(INF), "x", "lower")
a_dg, d_small = ALPHAS_DIGITS[-1], D_DIGITS[0]
metrics[f"ratio_fd_{name(d_small)}_over_Dinf_alpha{key_number(a_dg)}"] = metric(fd_mean(d_small, a_dg) / fd_mean(INF, a_dg), "x", "lower")
metrics["ratio_w2sq_D2_over_Dinf_alpha0"] = metric(
    metrics["w2sq_2d_D2_alpha0"]["value"] / metrics["w2sq_2d_Dinf_alpha0"]["value"], "x", "higher")
record("06_poisson_flows", metrics, mode=mode, seed=seed, wall_s=time.perf_counter() - t_start)

# the chapter's claims, checked every run
assert max(moment_errs) < 0.03, "the radius sampler should match E|x-y|² = N sigma² D/(D-2)"
assert all(v < 0.05 for v in exact_landing.values()), "the exact-denoiser ODE should land on the data"
assert mean_std(w2, INF, "alpha", 0.0)[0] < (1.0 if quick else 0.4), "the Gaussian limit should learn the board"
assert inc(4) < inc(INF), "state noise should hurt D = 4 less than D = inf (PFGM++ §6)"
assert inc(2) < inc(INF), "state noise should hurt D = 2 less than D = inf (PFGM++ §6)"
assert metrics["ratio_w2sq_D2_over_Dinf_alpha0"]["value"] > 3, "D = 2 in 2D: heavy tails should cost accuracy"
for D in D_2D:  # more Heun steps help every D
    e = [mean_std(w2, D, "steps", k)[0] for k in STEPS_2D]
    assert e == sorted(e, reverse=True), f"{name(D)}: W2² should fall with NFE"
if not quick:
    assert all(fd_mean(D, 0.0) < 4 * fd_floor for D in D_DIGITS), "digits: FD within 4x of the floor"
    for s in range(seeds_digits):  # the ordering holds for every training seed, not only on average
        assert fd_seed(4, a_dg, s) - fd_seed(4, 0.0, s) < fd_seed(INF, a_dg, s) - fd_seed(INF, 0.0, s), \
            f"digits, seed {s}: state noise should hurt D = 4 less than D = inf (PFGM++ §6)"

# %%
# NBVAL_IGNORE_OUTPUT
ResultsTable(metrics)

# %% [markdown]
# ## Summary
#
# * PFGM++'s kernel $p_r(x\mid y)\propto(\|x-y\|^2+r^2)^{-(N+D)/2}$ is a Student $t$ with $D$
#   degrees of freedom; its radius is $r\sqrt{B/(1-B)}$ with $B\sim\mathrm{Beta}(N/2,D/2)$,
#   and with $r=\sigma\sqrt D$ it becomes EDM's Gaussian as $D\to\infty$.
# * Training and sampling are EDM's with that one change of kernel: the ODE
#   $dx/d\sigma=(x-D(x,\sigma))/\sigma$ holds for every $D$, and only the denoiser's
#   posterior changes.
# * $D$ acts through the spread of radii, $\approx2/N+2/D$ in $\log R^2$: it matters when $D$ is
#   not much larger than $N$.
# * Robustness to noise in the sampler reproduces: state noise $\alpha\sigma_t$ hurt small $D$
#   least, on 2D ($W_2^2$ +0.71 for $D=4$ against +1.04 for $D=\infty$ at $\alpha=0.4$, 3 seeds)
#   and on digits (FD +2.2 for $D=4$ against +28 for $D=\infty$ at $\alpha=0.5$, mean of 2
#   training seeds; the ordering holds for each seed).
# * Rigidity is the price: $D=2$ in 2D (infinite-variance kernel) leaves outliers that make
#   $W_2^2$ 14 times the Gaussian's; and robustness to fewer steps did not reproduce — with 6 to
#   18 NFE $D=\infty$ was as good or better on both data sets.
#
# ## Exercises
#
# 1. Show that $p_{\sigma\sqrt D}(x\mid y)\to\mathcal N(y,\sigma^2I)$ pointwise as $D\to\infty$,
#    including the normalising constant (use Stirling's formula for $\Gamma(\frac{N+D}2)/\Gamma(\frac D2)$).
# 2. Train on 8×8 digits with $D=64$ and $D=1024$ and place them on the FD-versus-$\alpha$ plot.
#    Where, in $D/N$, does the kernel stop differing from the Gaussian?
# 3. The paper's other robustness test quantises the trained weights. Round every weight of the
#    2D models to 4, 6 and 8 bits and compare the $W_2^2$ increase across $D$.
# 4. Replace EDM's $\ln\sigma\sim\mathcal N(-1.2,1.2^2)$ by PFGM++'s alignment in $r$ directly
#    (sample $r$, set $\sigma=r/\sqrt D$): does anything change for finite $D$?
