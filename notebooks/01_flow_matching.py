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
# # 01 · Flow matching
#
# A continuous normalizing flow moves source samples $x_0\sim p_0$ to data by an ODE
# $\dot x_t=u_t(x_t)$. Flow matching (Lipman et al., 2023) learns $u_t$ by regression,
# without simulating the ODE during training. This chapter derives the conditional
# flow matching (CFM) loss, then trains four ways of choosing the training pairs —
# independent (I-CFM), minibatch optimal transport (OT-CFM), Gibbs-weighted (W-CFM) and
# Schrödinger bridge (SB-CFM) — and measures what the pairing buys: fewer solver steps,
# straighter and shorter paths, and an exact likelihood.
#
# ## From the marginal velocity to a regression target
#
# Pick a coupling $\pi(x_0,x_1)$ of source and data and a path between each pair, here the
# straight line $x_t=t\,x_1+(1-t)\,x_0$ with conditional velocity $\dot x_t = x_1-x_0$. The
# marginal density $p_t$ of $x_t$ is transported by the **marginal velocity**
#
# $$u_t(x)=\mathbb E\left[\dot x_t \mid x_t=x\right]
#   =\int (x_1-x_0)\,\frac{p_t(x\mid x_0,x_1)\,\pi(x_0,x_1)}{p_t(x)}\,dx_0\,dx_1 ,$$
#
# because averaging the continuity equations of the conditional paths gives
# $\partial_t p_t + \nabla\cdot(p_t u_t)=0$. We cannot evaluate $u_t$, but a
# conditional expectation is the minimiser of a squared error, so
#
# $$\mathcal L_\text{CFM}(\theta)=\mathbb E_{t,(x_0,x_1)\sim\pi}\,
#   \big\|v_\theta(x_t,t)-(x_1-x_0)\big\|^2$$
#
# has the same gradient as the intractable $\mathbb E\|v_\theta(x_t,t)-u_t(x_t)\|^2$
# (Lipman et al., 2023, Thm. 2). The coupling is free: with independent pairs the
# conditional lines cross and $u_t$ averages over them, so its trajectories curve; with
# OT pairs they rarely cross, the marginal flow is nearly straight, and one Euler step
# gets close (Tong et al., 2024; Pooladian et al., 2023).

# %% tags=["parameters"]
from minigen.workbook.record import parameter_defaults, quick_from_env

quick = quick_from_env()  # True under make test and make lab (MINIGEN_QUICK); write False for a full run
seed = 0
steps_main = 10000  # training steps on 8gaussians -> moons (full mode)
steps_other = 5000  # training steps on N(0,I) -> 8gaussians and N(0,I) -> checkerboard
batch_size = 256
n_eval = 2000  # fresh points for exact W2 (EMD)
ll_points = 2000  # test points for the exact log-likelihood
grid = 80  # density image resolution
ema_decay = 0.999
defaults = parameter_defaults(globals())  # before papermill's injected parameters

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
from IPython.display import HTML, display

from minigen.data import toy2d
from minigen.eval.metrics import normalized_path_energy, path_energy, w2sq_at_steps, wasserstein2_squared
from minigen.nets.mlp import MLP
from minigen.recipe import objectives
from minigen.recipe.likelihood import log_likelihood, standard_normal_log_prob
from minigen.recipe.ode_solvers import sample
from minigen.train import train
from minigen.workbook.record import ResultsTable, apply_quick, metric, record
from minigen.workbook.viz import (
    animation_html,
    log_density_image,
    scatter,
    show_source,
    time_slices,
    trajectories,
    vector_field,
)

t_start = time.perf_counter()
mode = "quick" if quick else "full"
if quick:
    apply_quick(globals(), defaults, steps_main=1500, steps_other=1500, batch_size=128, n_eval=500,
                ll_points=300, grid=30, ema_decay=0.99)
PAIRS = {"8gaussians-moons": ("8gaussians", "moons"),
         "normal-8gaussians": ("normal", "8gaussians"),
         "normal-checkerboard": ("normal", "checkerboard")}
METHODS = {"8gaussians-moons": ["icfm", "otcfm", "otcfm_sinkhorn", "wcfm", "sbcfm"],
           "normal-8gaussians": ["icfm", "otcfm", "wcfm", "sbcfm"],
           "normal-checkerboard": ["icfm", "otcfm", "wcfm", "sbcfm"]}
if quick:
    PAIRS = {k: PAIRS[k] for k in ("8gaussians-moons", "normal-checkerboard")}
    METHODS = {"8gaussians-moons": ["icfm", "otcfm", "wcfm", "sbcfm"], "normal-checkerboard": ["icfm"]}
for pair, methods in METHODS.items():
    n = steps_main if pair == "8gaussians-moons" else steps_other
    print(f"{mode}: {pair:20s} {', '.join(methods)}: {n} steps each, batch {batch_size}")

# %% [markdown]
# **What runs.** Full mode trains I-CFM, OT-CFM, OT-CFM with a cheap Sinkhorn pairing,
# W-CFM and SB-CFM on 8gaussians → moons for 10000 steps, and I-CFM, OT-CFM, W-CFM and SB-CFM
# on N(0, I) → 8gaussians and N(0, I) → checkerboard for 5000 steps, all with the 3 × 64 SELU
# MLP of Tong et al. (2024), batch 256, Adam 1e-3 and an EMA (0.999) of the weights;
# W2 uses 2000 fresh points. Quick mode (the tests) trains I-CFM, OT-CFM, W-CFM and SB-CFM on
# 8gaussians → moons and I-CFM on checkerboard for 1500 steps at batch 128 (EMA 0.99), with 500
# points for W2.
#
# The data sets are exactly those of the published 2D tables: 8 Gaussians of covariance
# $\sqrt{0.1}\,I$ at radius 5, and torchdyn's moons scaled by 3 and shifted by −1.

# %%
g = torch.Generator().manual_seed(seed)
fig, axes = plt.subplots(1, 4, figsize=(10, 2.6))
for ax, name in zip(axes, ["normal", "8gaussians", "moons", "checkerboard"]):
    scatter(ax, toy2d.sample_2d(name, 2000, g), title=name)
fig.tight_layout()

# %% [markdown]
# ## The variants are one field apart
#
# Every variant is {py:class}`minigen.recipe.objectives.CFM` with one part changed: the coupling
# (exact OT via the Hungarian algorithm, or a few Sinkhorn iterations), per-pair Gibbs
# weights $w=e^{-\|x_1-x_0\|^2/\varepsilon}$ (W-CFM), or a bridge path with noise
# $s\sqrt{t(1-t)}\,z$ plus the entropic coupling with $\text{reg}=2s^2$ (SB-CFM).

# %%
show_source(objectives.CFM.per_sample_loss)

# %%
show_source(objectives.CFM.loss)

# %%
show_source(objectives.cfm_variant)

# %% [markdown]
# ## Training
#
# One loop trains everything ({py:func}`minigen.train.train`). We time each training
# step (the coupling's cost is part of it) and keep an EMA of the weights for sampling.

# %%
GIBBS_EPS = {"8gaussians-moons": 10.0, "normal-8gaussians": 10.0, "normal-checkerboard": 5.0}
models, timings = {}, {}
for pair, (src, dst) in PAIRS.items():
    n_steps = steps_main if pair == "8gaussians-moons" else steps_other
    for method in METHODS[pair]:
        cfm = objectives.cfm_variant(method, source_is_gaussian=(src == "normal"),
                                     gibbs_eps=GIBBS_EPS[pair])
        torch.manual_seed(seed)  # same initial weights for every method
        net = MLP(2, width=64, depth=3, activation="selu")
        batch = lambda gen, s=src, d=dst: (toy2d.sample_2d(s, batch_size, gen),
                                           toy2d.sample_2d(d, batch_size, gen))
        res = train(net, cfm.loss, batch, steps=n_steps, lr=1e-3, seed=seed,
                    ema_decay=ema_decay, per_t_bins=10, progress=False, device="cpu")
        models[pair, method] = res.ema
        timings[pair, method] = res.ms_per_step
        if method == "icfm":
            per_t_icfm = res.per_t

# %%
# NBVAL_IGNORE_OUTPUT
# wall-clock times vary run to run; everything else in this notebook is deterministic
for (pair, method), ms in timings.items():
    print(f"{pair:20s} {method:15s} {ms:6.2f} ms/step")

# %% [markdown]
# The per-$t$ loss diagnostic shows where the regression is hard: for I-CFM the
# conditional target $x_1-x_0$ is most ambiguous in the middle of the path, where many
# lines cross, so the irreducible loss peaks there.

# %%
fig, ax = plt.subplots(figsize=(4, 2.6))
ax.bar(per_t_icfm[0], per_t_icfm[1], width=0.09)
ax.set_xlabel("t")
ax.set_ylabel("mean CFM loss")
ax.set_title(f"I-CFM loss by t ({list(PAIRS)[-1]})", fontsize="medium")
fig.tight_layout()

# %% [markdown]
# ## Sample quality against the number of steps
#
# We push `n_eval` fresh source points through each model with 1, 2, 4, 8 and 100 Euler
# steps and with the adaptive dopri5 solver, and compute the exact squared 2-Wasserstein
# distance to `n_eval` fresh data points (network simplex, squared Euclidean cost).

# %%
eval_gen = torch.Generator().manual_seed(seed + 1000)
evals = {}
for pair, (src, dst) in PAIRS.items():
    x0 = toy2d.sample_2d(src, n_eval, eval_gen)
    x1 = toy2d.sample_2d(dst, n_eval, eval_gen)
    w2_src = wasserstein2_squared(x0, x1)
    for method in METHODS[pair]:
        v = models[pair, method]
        r = w2sq_at_steps(v, x0, x1)
        r["npe"] = normalized_path_energy(path_energy(v, x0, 100), w2_src)
        evals[pair, method] = r
    floor = wasserstein2_squared(toy2d.sample_2d(dst, n_eval, eval_gen), x1)
    evals[pair, "floor"] = floor
    print(f"{pair}: W2²(source, target) = {w2_src:.2f}; two fresh data samples: W2² = {floor:.4f}")
    print(f"  {'method':15s}" + "".join(f"{k:>9s}" for k in ["euler1", "euler2", "euler4", "euler8",
                                                           "euler100", "adaptive", "NFE", "NPE"]))
    for method in METHODS[pair]:
        r = evals[pair, method]
        print(f"  {method:15s}" + "".join(f"{r[k]:9.3f}" for k in ["euler1", "euler2", "euler4", "euler8",
                                                                   "euler100", "adaptive"])
              + f"{r['nfe_adaptive']:9d}{r['npe']:9.3f}")

# %% [markdown]
# Read the tables row by row. With independent pairs one Euler step lands the samples at
# the *mean* of the conditional targets — a blur between the moons — and it takes many
# steps or an adaptive solver to follow the curved flow. OT pairs give a nearly straight
# flow: one step is already close to the adaptive solution, and the adaptive solver needs
# fewer evaluations. The normalised path energy (NPE, $|\mathrm{PE}-W_2^2|/W_2^2$, 0 for
# the OT map) tells the same story in one number.
#
# The cheaper pairings sit in between. W-CFM's Gibbs weights buy part of the one-step gain
# without any OT solve, but they also tilt the learned marginals: the weighted coupling
# matches the data only up to a bias that shrinks as $\varepsilon$ grows (Calvo-Ordoñez et
# al., 2025) — compare its adaptive column with I-CFM's; exercise 2 sweeps $\varepsilon$.
# The entropic pairings (a few Sinkhorn iterations, and SB-CFM's bridge) are nearly
# straight, with a small blur from the entropy, at a fraction of the exact assignment's
# cost per step (compare the ms/step column of the results table).

# %%
pair = "8gaussians-moons"
x0 = toy2d.sample_2d("8gaussians", 1000, eval_gen)
shown = [m for m in ("icfm", "otcfm", "wcfm", "sbcfm") if m in METHODS[pair]]
fig, axes = plt.subplots(2, len(shown), figsize=(3 * len(shown), 6))
for j, method in enumerate(shown):
    v = models[pair, method]
    sol = sample(v, x0, "euler", 100, return_trajectory=True)
    trajectories(axes[0, j], sol.trajectory, n=300, title=f"{method}: 100-step trajectories")
    scatter(axes[1, j], sample(v, x0, "euler", 1).x, title=f"{method}: one Euler step", s=2)
fig.tight_layout()

# %%
fig, axes = plt.subplots(1, 4, figsize=(12, 3))
for ax, (method, tt) in zip(axes, [("icfm", 0.25), ("icfm", 0.75), ("otcfm", 0.25), ("otcfm", 0.75)]):
    vector_field(ax, models[pair, method], tt, lim=7, n=18, title=f"{method}: v(x, t={tt})")
fig.tight_layout()

# %% [markdown]
# ## Watching the flow
#
# In Jupyter, the slider below moves the samples of each model along their trajectories.
# The static book cannot run the widget (its JavaScript lives on a CDN), so below it is a
# self-contained animation and a grid of time slices that need no network.

# %% tags=["remove-cell"]
# NBVAL_IGNORE_OUTPUT
import ipywidgets as widgets  # noqa: E402

trajs = {m: sample(models[pair, m], x0, "euler", 50, return_trajectory=True) for m in shown}


def show_t(step=25, method="otcfm"):
    fig, ax = plt.subplots(figsize=(3.5, 3.5))
    sol = trajs[method]
    scatter(ax, sol.trajectory[step], title=f"{method}, t = {float(sol.times[step]):.2f}", s=2)
    plt.show()


widgets.interact(show_t, step=widgets.IntSlider(min=0, max=50, value=25), method=shown)

# %%
sol_i = sample(models[pair, "icfm"], x0, "euler", 50, return_trajectory=True)
sol_o = sample(models[pair, "otcfm"], x0, "euler", 50, return_trajectory=True)
_ = time_slices(sol_i.trajectory, sol_i.times, k=6, title="I-CFM")
_ = time_slices(sol_o.trajectory, sol_o.times, k=6, title="OT-CFM")

# %%
# NBVAL_IGNORE_OUTPUT
display(HTML(animation_html(sol_o.trajectory, sol_o.times, frames=11 if quick else 26)))

# %% [markdown]
# ## Exact likelihood on the checkerboard
#
# A flow is an invertible map, so it has a density. By the instantaneous change of
# variables (Chen et al., 2018),
#
# $$\log p_1(x_1)=\log p_0(x_0)-\int_0^1\nabla\!\cdot v_\theta(x_t,t)\,dt ,$$
#
# integrating the data point back to $t=0$ together with the divergence (computed
# exactly here: two dimensions, two backward passes). The checkerboard's true density is
# $1/32$ on its support, so its entropy is $\log 32=3.466$ nats: no model can have a lower
# test NLL, and the gap is $\mathrm{KL}(p_\text{data}\,\|\,p_\theta)$.

# %%
show_source(log_likelihood)

# %%
ll_gen = torch.Generator().manual_seed(seed + 2000)
x_test = toy2d.checkerboard(ll_points, ll_gen)
true_nll = math.log(32.0)
ll_steps = 20 if quick else 50
nll = {}
for method in METHODS["normal-checkerboard"]:
    v = models["normal-checkerboard", method]
    nll[method] = float(-log_likelihood(v, x_test, standard_normal_log_prob, steps=ll_steps).mean())
hutch = float(-log_likelihood(models["normal-checkerboard", "icfm"], x_test, standard_normal_log_prob,
                              steps=ll_steps, estimator="hutchinson", generator=ll_gen).mean())
print(f"true entropy (the lowest possible NLL): {true_nll:.3f} nats")
for method, val in nll.items():
    print(f"{method:8s} test NLL {val:.3f} nats  (KL to the data ≈ {val - true_nll:.3f})")
print(f"icfm     test NLL with the Hutchinson estimator: {hutch:.3f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.2))
log_density_image(axes[0], toy2d.checkerboard_log_density, title="true density")
v = models["normal-checkerboard", "icfm"]
log_density_image(axes[1], lambda p: log_likelihood(v, p, standard_normal_log_prob, steps=ll_steps),
                  n=grid, title="I-CFM density (exact CNF)")
fig.tight_layout()

# %% [markdown]
# ## Results

# %%
metrics = {}
for (pair, method), r in evals.items():
    if method == "floor":
        metrics[f"w2sq_floor_{pair}"] = metric(r, "", "lower")
        continue
    for k in ("euler1", "euler2", "euler4", "euler8", "euler100", "adaptive"):
        metrics[f"w2sq_{k}_{method}_{pair}"] = metric(r[k], "", "lower")
    metrics[f"nfe_adaptive_{method}_{pair}"] = metric(r["nfe_adaptive"], "NFE", "lower")
    metrics[f"npe_{method}_{pair}"] = metric(r["npe"], "", "lower")
    metrics[f"ms_per_step_{method}_{pair}"] = metric(timings[pair, method], "ms", "lower")
m = "8gaussians-moons"
metrics[f"ratio_w2sq_euler1_icfm_over_otcfm_{m}"] = metric(
    evals[m, "icfm"]["euler1"] / evals[m, "otcfm"]["euler1"], "x", "higher")
for method, val in nll.items():
    metrics[f"nll_checkerboard_{method}"] = metric(val, "nats", "lower")
metrics["nll_checkerboard_icfm_hutchinson"] = metric(hutch, "nats", "lower")
metrics["nll_checkerboard_true_entropy"] = metric(true_nll, "nats", "lower")
record("01_flow_matching", metrics, mode=mode, seed=seed, wall_s=time.perf_counter() - t_start)

# the chapter's claims, checked every run
assert evals[m, "otcfm"]["euler1"] < evals[m, "icfm"]["euler1"] / 5, "OT pairs should make one step work"
assert evals[m, "otcfm"]["npe"] < evals[m, "icfm"]["npe"], "OT pairs should shorten the paths"
assert all(v > true_nll - 0.05 for v in nll.values()), "an NLL below the entropy means a bug"

# %%
# NBVAL_IGNORE_OUTPUT
ResultsTable(metrics)

# %% [markdown]
# ## Summary
#
# * CFM regresses a network onto per-pair velocities $x_1-x_0$; the minimiser is the
#   marginal velocity, whatever coupling produced the pairs.
# * The coupling shapes the flow: independent pairs give curved trajectories that need
#   many steps; minibatch OT gives nearly straight ones, good in one or two steps and
#   with lower path energy. Gibbs weights (W-CFM) and a few Sinkhorn iterations buy much
#   of that without an exact assignment.
# * A trained flow is a density model: the instantaneous change of variables gives its
#   exact log-likelihood, bounded below by the data entropy.
#
# ## Exercises
#
# 1. Train OT-CFM at batch sizes 32, 128 and 512. How does the one-step W2² change, and
#    why does minibatch OT approach the true OT map only as the batch grows?
# 2. Sweep W-CFM's temperature $\varepsilon$ from 1 to 1000 on 8gaussians → moons. Plot the
#    one-step W2² and the NPE against $\varepsilon$ and mark I-CFM and OT-CFM as references.
# 3. Replace the linear path by `VPCosinePath` in `CFM` for N(0, I) → checkerboard and compare
#    the number of adaptive-solver steps. Which path is straighter here?
# 4. Estimate the variance of the Hutchinson divergence estimate and the number of probe
#    vectors needed to match the exact NLL to 0.01 nats.
