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
# # 04 · Straight paths
#
# A flow that moves its samples along straight lines at constant speed is solved exactly by a
# single Euler step. Chapter 01 straightened the flow by choosing better training pairs before
# training (minibatch OT). This chapter straightens it *after* training: **rectified flow**
# (Liu, Gong & Liu, 2023) retrains the flow on the pairs it generates itself (**reflow**),
# which provably never increases the transport cost and makes the paths straighter, and then
# **distils** the straight flow into one step. **Rectified Diffusion** (Wang et al., 2024)
# argues that what matters is the matched pairs, not straightness: a diffusion model retrained
# on its own (noise, sample) pairs keeps its curved path and still samples in one step with a
# first-order solver. Last, the time sampler: **Scaling Rectified Flow Transformers** (Esser et
# al., 2024) showed that training more often at intermediate times helps; we derive their
# mode-sampling density and compare three samplers on small images, with a U-Net and with a
# tiny patch transformer of the kind they scale up.
#
# | quantity | Liu et al. (2023) | Esser et al. (2024) | minigen |
# |---|---|---|---|
# | source (noise) | $X_0\sim\pi_0$, $t=0$ | $\epsilon$, $t=1$ | $x_0$, $t=0$ |
# | data | $X_1\sim\pi_1$, $t=1$ | $x_0$, $t=0$ | $x_1$, $t=1$ |
# | path | $X_t=tX_1+(1-t)X_0$ | $z_t=(1-t)x_0+t\epsilon$ | $x_t=t\,x_1+(1-t)\,x_0$ |
#
# Liu et al. use our convention; Esser et al.'s time runs the other way, $t_\text{ours}=1-t_\text{theirs}$.
# Every time density used below is symmetric about $1/2$, so it reads the same in both.
#
# ## Rectified flow and reflow
#
# Take any coupling $(X_0,X_1)$ of source and data, the straight interpolation
# $X_t=tX_1+(1-t)X_0$ and the velocity $v(x,t)=\mathbb E[X_1-X_0\mid X_t=x]$, learned by the
# CFM regression of chapter 01. The flow $\dot Z_t=v(Z_t,t)$, $Z_0=X_0$, has the marginals of
# $X_t$ (the same continuity equation), so $(Z_0,Z_1)$ is a new coupling of the same two
# distributions: the **rectified coupling**. With independent $(X_0,X_1)$ this is
# *1-rectified flow*, the I-CFM of chapter 01. *Reflow* trains the next flow on the pairs
# $(Z_0,Z_1)$: this is a **model-induced coupling**, and in code it is one more coupling passed to
# the same `CFM` and the same `train` ({py:class}`minigen.transport.rectified.ReflowCoupling`).
#
# ## The transport-cost identity
#
# Write $D=X_1-X_0$ and $V(X)=\mathbb E\int_0^1\|D-v(X_t,t)\|^2dt$, the CFM loss at its optimum
# (the conditional variance of $D$ given $X_t$). Since $v$ is a conditional expectation, $D-v$
# is orthogonal to any function of $X_t$, so
#
# $$\mathbb E\|X_1-X_0\|^2=\mathbb E\int_0^1\|v(X_t,t)\|^2dt+V(X).$$
#
# For the flow, $Z_1-Z_0=\int_0^1 v(Z_t,t)\,dt$, and expanding the square gives, trajectory by
# trajectory, $\int_0^1\|v(Z_t,t)-(Z_1-Z_0)\|^2dt=\int_0^1\|v(Z_t,t)\|^2dt-\|Z_1-Z_0\|^2$. The
# left side is the **straightness** $S(Z)$ (Liu et al., Def. 3.6), zero iff every trajectory is
# a straight line at constant speed. Because $Z_t$ and $X_t$ have the same marginal, the two
# kinetic energies are equal, and subtracting:
#
# $$\boxed{\;\mathbb E\|X_1-X_0\|^2-\mathbb E\|Z_1-Z_0\|^2 = V(X)+S(Z)\;}$$
#
# Both terms are non-negative, so the rectified coupling never costs more (for the squared cost,
# Liu et al.'s Thm. 3.5 covers every convex cost), and reflow gains exactly the conditional
# variance and the curvature it removes. When a reflow round's pairs are already on straight
# non-crossing lines, $V=S=0$: a fixed point.
#
# **For a learned field.** A network $v_\theta$ is not the conditional expectation, and both
# steps above used that it is. Redo them for any field $v$ and its flow $Z$: at every $t$,
# $\|D\|^2=\|v\|^2+\|D-v\|^2+2\,v\cdot(D-v)$, and the trajectory identity needs nothing. So, exactly,
#
# $$\mathbb E\|X_1-X_0\|^2-\mathbb E\|Z_1-Z_0\|^2 = L(v)+S(Z)+\underbrace{\big[K_X(v)-K_Z(v)\big]}_{\text{marginal mismatch}}+2\,\underbrace{\mathbb E\!\int_0^1\! v(X_t,t)\cdot\big(D-v(X_t,t)\big)dt}_{C(v)},$$
#
# with $L(v)=\mathbb E\int\|D-v(X_t,t)\|^2dt$ the CFM loss ($=V$ plus the excess
# $\mathbb E\int\|v-v^\star\|^2$), $K_X(v)=\mathbb E\int\|v(X_t,t)\|^2dt$ the field's kinetic energy under
# the interpolant's marginals and $K_Z(v)=\mathbb E\int\|v(Z_t,t)\|^2dt$ under its own flow's.
# $C(v)=-\tfrac12\,\frac{d}{dc}L(cv)\big|_{c=1}$ vanishes at any stationary point of the loss in
# the field's scale, and $K_X-K_Z$ vanishes when the learned flow reproduces the marginals. At
# $v=v^\star$ both are zero and $L=V$: the boxed identity. `identity_terms` measures all four
# terms, so the paper's "gap" $\text{lhs}-(L+S)$ is not left as noise: it is $(K_X-K_Z)+2C$,
# term by term. (The unit tests check $L=V+(1-c)^2K^\star$ and $C=c(1-c)K^\star$ for the scaled
# Gaussian field $c\,v^\star$ below.)
#
# **Distillation.** Once the pairs $(Z_0,Z_1)$ are (nearly) straight, regressing
# $v_\theta(Z_0,0)$ onto $Z_1-Z_0$, i.e. the same CFM loss with $t\equiv0$, gives a one-step map
# $Z_0\mapsto Z_0+v_\theta(Z_0,0)$ (Liu et al., §2.3).

# %% tags=["parameters"]
from minigen.workbook.record import parameter_defaults, quick_from_env

quick = quick_from_env()  # True under make test and make lab (MINIGEN_QUICK); write False for a full run
seed = 0
steps_rf1 = 8000  # 1-rectified flow, 8gaussians -> moons
steps_reflow = 4000  # each reflow round (warm-started from the previous flow)
steps_distill = 2000  # one-step distillation
steps_rd = 3000  # Rectified Diffusion: teacher and each student (N(0, I) -> moons)
n_pairs = 20000  # pairs generated by each teacher flow
pair_steps = 25  # RK4 steps (4 NFE each) to generate pairs
batch_size = 256
n_eval = 2000  # fresh points for exact W2 and the identity
ema_decay = 0.999
digits_steps = 400  # training steps per network, time sampler and seed on 8x8 digits
digits_seeds = 2  # seeds for the U-Net
dit_seeds = 2  # seeds for the patch transformer
digits_batch = 64
fd_steps = [8, 32]  # Euler steps (NFE) at which the FD is measured
n_fd = 359  # generated digits for the FD: the size of the held-out test split
defaults = parameter_defaults(globals())  # before papermill's injected parameters

# %%
import math
import time

import matplotlib.pyplot as plt
import torch

from minigen.data import images, toy2d
from minigen.eval import fd
from minigen.eval.metrics import flow_terms, w2sq_at_steps, wasserstein2_squared
from minigen.nets.mlp import MLP
from minigen.nets.transformer import PatchTransformer
from minigen.nets.unet import UNet
from minigen.recipe.objectives import CFM
from minigen.recipe.ode_solvers import integrate, sample
from minigen.recipe.paths import LinearPath, VPLinearBetaPath
from minigen.recipe.time_samplers import mode_time_density, sample_time
from minigen.train import train
from minigen.transport.rectified import (
    ReflowCoupling,
    ddim_sample,
    gaussian_rectified_velocity,
    identity_terms,
    model_pairs,
)
from minigen.workbook.record import ResultsTable, apply_quick, metric, record
from minigen.workbook.viz import scatter, show_source, trajectories

t_start = time.perf_counter()
mode = "quick" if quick else "full"
if quick:
    apply_quick(globals(), defaults, steps_rf1=300, steps_reflow=120, steps_distill=60, steps_rd=250,
                n_pairs=2000, pair_steps=10, batch_size=128, n_eval=300, ema_decay=0.99,
                digits_steps=1, digits_seeds=1, dit_seeds=1, digits_batch=32, n_fd=100, fd_steps=[4])
metrics = {}
print(f"{mode}: 1-RF {steps_rf1} steps, reflow {steps_reflow}, distill {steps_distill}, "
      f"Rectified Diffusion {steps_rd}; digits {digits_steps} steps x {digits_seeds} U-Net seeds, "
      f"{dit_seeds} transformer seeds")

# %% [markdown]
# ## A closed form first: Gaussian to Gaussian
#
# For $X_0\sim\mathcal N(0,I)$ and $X_1\sim\mathcal N(m,s^2I)$ drawn independently, $X_t$ is
# Gaussian with mean $tm$ and variance $s_t^2=t^2s^2+(1-t)^2$, and the 1-rectified velocity is
# linear: $v(x,t)=m+\frac{\dot s_t}{s_t}(x-tm)$. Its flow is $Z_t=tm+s_tZ_0$, so $Z_1=m+sZ_0$ —
# the optimal transport map — reached along paths that bend in time unless $s=1$. The costs are
# $\mathbb E\|X_1-X_0\|^2=|m|^2+d(1+s^2)$ and $\mathbb E\|Z_1-Z_0\|^2=|m|^2+d(1-s)^2$, so
# $V+S=2ds$. The exact field lets us check the identity to Monte Carlo precision.

# %%
show_source(identity_terms)

# %%
g = torch.Generator().manual_seed(seed)
m_gauss, s_gauss, d_gauss = torch.tensor([3.0, 0.0], dtype=torch.float64), 0.5, 2
n_g = 4 * n_eval
gx0 = torch.randn(n_g, 2, generator=g, dtype=torch.float64)
gx1 = m_gauss + s_gauss * torch.randn(n_g, 2, generator=g, dtype=torch.float64)
v_gauss = gaussian_rectified_velocity(m_gauss, s_gauss)
gid1 = identity_terms(v_gauss, gx0, gx1, steps=200)
gz0, gz1 = model_pairs(v_gauss, gx0, "rk4", 50)
# the 2-rectified field of straight pairs (Z0, m + s Z0): E[Z1 - Z0 | Z_t = x]
v2_gauss = lambda x, t: m_gauss + (s_gauss - 1) * (x - t[:, None] * m_gauss) / (1 - t[:, None] + t[:, None] * s_gauss)
gid2 = identity_terms(v2_gauss, gz0, gz1, steps=200)
print(f"closed form: V = pi d s / 2 = {math.pi * d_gauss * s_gauss / 2:.4f}, "
      f"S = d s (2 - pi/2) = {d_gauss * s_gauss * (2 - math.pi / 2):.4f}")
print(f"closed form: cost_x {m_gauss.pow(2).sum() + d_gauss * (1 + s_gauss**2):.3f}, "
      f"cost_z {m_gauss.pow(2).sum() + d_gauss * (1 - s_gauss)**2:.3f}, V + S = {2 * d_gauss * s_gauss:.3f}")
for name, r in (("1-RF", gid1), ("2-RF", gid2)):
    print(f"{name}: cost_x {r['cost_x']:.3f} ± {r['cost_x_se']:.3f}, cost_z {r['cost_z']:.3f} ± {r['cost_z_se']:.3f}, "
          f"V {r['conditional_variance']:.4f}, S {r['straightness']:.4f}; "
          f"lhs {r['lhs']:.3f} vs rhs {r['rhs']:.3f}: gap {r['gap']:+.4f} ± {r['gap_se']:.4f}")
metrics["gauss_identity_gap_over_se"] = metric(abs(gid1["gap"]) / gid1["gap_se"], "SE", "lower")
metrics["gauss_conditional_variance"] = metric(gid1["conditional_variance"], "", "lower")
metrics["gauss_kinetic_mismatch_over_se"] = metric(abs(gid1["kinetic_mismatch"]) / gid1["kinetic_mismatch_se"],
                                                   "SE", "lower")
metrics["gauss_cross_over_se"] = metric(abs(gid1["cross"]) / gid1["cross_se"], "SE", "lower")
metrics["gauss_rf1_cost_z"] = metric(gid1["cost_z"], "", "lower")
metrics["gauss_rf1_straightness"] = metric(gid1["straightness"], "", "lower")
metrics["gauss_rf2_straightness"] = metric(gid2["straightness"], "", "lower")

# %% [markdown]
# The identity holds to Monte Carlo error, and reflow gains everything in one round: the 1-RF
# pairs are the OT map, they lie on straight lines that never cross, so the 2-rectified flow has
# $V=S=0$ and keeps the cost — reflow's fixed point.
#
# ## 8 Gaussians to moons: three rounds of reflow and a distilled one-step model
#
# The source is a mixture, not a Gaussian, so the path is built with
# `source_is_gaussian=False` and source points come from `toy2d.sample_2d("8gaussians", ...)`.
# Each reflow round draws `n_pairs` fresh source points, pushes them through the previous flow
# with RK4 to get pairs, and trains with those pairs as the coupling, warm-started from the
# previous flow (as Liu et al. do). The distilled model starts from the last flow and regresses
# at $t=0$ only.

# %%
show_source(ReflowCoupling)

# %%
lin = LinearPath(source_is_gaussian=False)
src_batch = lambda gen: (toy2d.sample_2d("8gaussians", batch_size, gen), toy2d.sample_2d("moons", batch_size, gen))


def fit(objective, sample_batch, steps, init=None, seed_=seed):
    """A 3 x 64 SELU MLP, Adam 1e-3, EMA; warm-started from ``init`` when given."""
    torch.manual_seed(seed_)
    net = MLP(2, width=64, depth=3, activation="selu")
    if init is not None:
        net.load_state_dict(init.state_dict())
    res = train(net, objective.loss, sample_batch, steps=steps, lr=1e-3, seed=seed_,
                ema_decay=ema_decay, progress=False, device="cpu")
    return res.ema


pair_gen = torch.Generator().manual_seed(seed + 7)
flows = {"1-RF": fit(CFM(lin), src_batch, steps_rf1)}
couplings = {}
for k in (2, 3):
    prev = flows[f"{k - 1}-RF"]
    z0, z1 = model_pairs(prev, toy2d.sample_2d("8gaussians", n_pairs, pair_gen), "rk4", pair_steps)
    couplings[k] = ReflowCoupling(z0, z1)
    flows[f"{k}-RF"] = fit(CFM(lin, coupling=couplings[k]), couplings[k].batch(batch_size),
                           steps_reflow, init=prev)
z0, z1 = model_pairs(flows["3-RF"], toy2d.sample_2d("8gaussians", n_pairs, pair_gen), "rk4", pair_steps)
distill_pairs = ReflowCoupling(z0, z1)
distill = CFM(lin, coupling=distill_pairs, time_sampler="constant", time_loc=0.0)  # t ≡ 0
flows["3-RF distilled"] = fit(distill, distill_pairs.batch(batch_size), steps_distill, init=flows["3-RF"])

# %% [markdown]
# For each round we measure W2² to fresh moons at 1, 2, 4 and 100 Euler steps and with dopri5,
# and the two sides of the identity on fresh pairs *of the coupling that round was trained on*:
# independent pairs for 1-RF, pairs pushed through the previous flow for $k$-RF.

# %%
eval_gen = torch.Generator().manual_seed(seed + 1000)
x0e = toy2d.sample_2d("8gaussians", n_eval, eval_gen)
x1e = toy2d.sample_2d("moons", n_eval, eval_gen)
floor_2d = wasserstein2_squared(toy2d.sample_2d("moons", n_eval, eval_gen), x1e)
w2, ident = {}, {}
for name, v in flows.items():
    w2[name] = w2sq_at_steps(v, x0e, x1e, steps=(1, 2, 4, 100))
    if "distilled" in name:
        continue
    k = int(name[0])
    tx1 = x1e if k == 1 else model_pairs(flows[f"{k - 1}-RF"], x0e, "rk4", pair_steps)[1]
    ident[name] = identity_terms(v, x0e, tx1, steps=100)
print(f"W2²(two fresh moons samples) = {floor_2d:.4f}")
print(f"{'':16s}" + "".join(f"{c:>10s}" for c in ("euler1", "euler2", "euler4", "euler100", "adaptive", "NFE")))
for name, r in w2.items():
    print(f"{name:16s}" + "".join(f"{r[c]:10.3f}" for c in ("euler1", "euler2", "euler4", "euler100", "adaptive"))
          + f"{r['nfe_adaptive']:10d}")
print()
print(f"{'':6s}{'E|X1-X0|²':>16s}{'E|Z1-Z0|²':>16s}{'L':>9s}{'S':>9s}{'lhs':>9s}{'L + S':>9s}"
      f"{'gap ± SE':>18s}{'K_X - K_Z':>18s}{'2C':>18s}")
for name, r in ident.items():
    print(f"{name:6s}{r['cost_x']:9.3f} ±{r['cost_x_se']:5.3f}{r['cost_z']:9.3f} ±{r['cost_z_se']:5.3f}"
          f"{r['conditional_variance']:9.3f}{r['straightness']:9.3f}{r['lhs']:9.3f}{r['rhs']:9.3f}"
          f"{r['gap']:+10.3f} ±{r['gap_se']:6.3f}{r['kinetic_mismatch']:+10.3f} ±{r['kinetic_mismatch_se']:6.3f}"
          f"{2 * r['cross']:+10.3f} ±{2 * r['cross_se']:6.3f}")

# %% [markdown]
# Read the tables. One round of reflow turns a flow that needs many steps into one that is
# nearly as good in one Euler step as in a hundred: its straightness $S$ drops by two orders of
# magnitude. The transport cost never rises, and almost all of the drop happens in the first
# round, where the large term is $V$, the conditional variance of the independent pairs, which
# reflow removes. The full run (`results/full/04_straight_paths.json`) measured one-step W2²
# 4.19 for 1-RF and 0.18 after one reflow (0.10 with 100 steps), $S$ 8.6 → 0.042 → 0.017 and
# costs 35.6 (independent pairs) → 8.87 → 8.56 → 8.48.
#
# **How well the identity holds.** The columns $K_X-K_Z$ and $2C$ are the two terms that make
# the identity exact for a learned field; the gap is their sum, sample by sample (`closure`
# records what is left: rounding). In the full run, for 1-RF the two sides, 26.7 and 25.7,
# differ by 1.01 ± 0.42 (2.4 standard errors, 4% of $L+S$), and most of it is the cross term
# $2C=0.84\pm0.29$: the learned field is not quite at the loss's optimum in its own scale. For
# 2-RF and 3-RF, $L+S$ is itself tiny (0.11, 0.04). Their gaps, 0.070 ± 0.013 (5.4 SE) and
# 0.039 ± 0.004 (9.5 SE), are not Monte Carlo noise: for 2-RF, 0.042 ± 0.008 of it is the
# kinetic mismatch $K_X-K_Z$ — the learned flow moves its mass through marginals slightly
# different from the interpolant's, about 0.5% of the kinetic energy, which a straight flow no
# longer hides under a large $V$ — and $2C=0.027\pm0.012$; for 3-RF, $0.025\pm0.003$ and
# $0.014\pm0.004$. Better training does not close it.
# A side run with the full settings retrained 2-RF (i) with the learning rate stepped
# 1e-3 → 3e-4 → 1e-4 over 12 000 steps (three times the budget), (ii) 128 wide, (iii) from a
# fresh initialisation: the loss and $S$ drop (to $L=0.047$, $S=0.029$ for (i)), but the gap
# stays at 0.077 ± 0.011, 0.096 ± 0.014 and 0.099 ± 0.016 (5.5–6.9 SE), with the kinetic
# mismatch 0.035–0.066 (4–7 SE) in every case. Nor is it the time grid: on a smaller 2-RF,
# 400 instead of 100 steps moved $K_X-K_Z$ from 0.0408 to 0.0412 (SE 0.005). So at this scale the paper's identity, with $V$
# estimated by the network's loss, does not close for a reflowed field; the exact statement
# for a learned field is the four-term one, and the Gaussian check above (no network) closes
# with both extra terms inside three standard errors. Later rounds gain little: each also
# re-learns, and so accumulates, the previous flow's errors (the 100-step W2² creeps up,
# 0.075 → 0.100 → 0.112).
# The distilled model is the best one-step sampler (0.13) and gives up the multi-step accuracy
# it no longer needs.

# %%
fig, axes = plt.subplots(1, 4, figsize=(13, 3.3))
z_show = x0e[:150 if quick else 300]
for ax, name in zip(axes[:3], ("1-RF", "2-RF", "3-RF")):
    sol = sample(flows[name], z_show, "euler", 50, return_trajectory=True)
    trajectories(ax, sol.trajectory, n=len(z_show), title=f"{name}: S = {ident[name]['straightness']:.3f}")
scatter(axes[3], sample(flows["3-RF distilled"], x0e, "euler", 1).x, s=2,
        title=f"distilled, one step: W2² = {w2['3-RF distilled']['euler1']:.2f}")
fig.tight_layout()

# %%
fig, ax = plt.subplots(figsize=(4.8, 3.2))
ks = [1, 2, 4, 100]
for name, r in w2.items():
    ax.plot(ks, [r[f"euler{k}"] for k in ks], "o-", label=name)
ax.axhline(floor_2d, color="k", ls=":", lw=1, label="two data samples")
ax.set(xscale="log", yscale="log", xlabel="Euler steps", ylabel="W2² to moons")
ax.legend(fontsize="small")
ax.set_title("reflow: sample quality against steps", fontsize="medium")
fig.tight_layout()

# %%
for name, r in w2.items():
    tag = name.replace(" ", "_").replace("-", "")
    for c in ("euler1", "euler2", "euler4", "euler100", "adaptive"):
        metrics[f"w2sq_{c}_{tag}"] = metric(r[c], "", "lower")
    metrics[f"nfe_adaptive_{tag}"] = metric(r["nfe_adaptive"], "NFE", "lower")
for name, r in ident.items():
    tag = name.replace("-", "")
    for c in ("cost_x", "cost_x_se", "cost_z", "cost_z_se", "conditional_variance", "straightness", "lhs",
              "rhs", "gap", "gap_se", "kinetic_mismatch", "kinetic_mismatch_se", "cross", "cross_se"):
        metrics[f"{c}_{tag}"] = metric(r[c], "", "lower")
    metrics[f"identity_rel_gap_{tag}"] = metric(abs(r["gap"]) / r["rhs"], "", "lower")
    metrics[f"identity_gap_over_se_{tag}"] = metric(abs(r["gap"]) / r["gap_se"], "SE", "lower")
    # the identity for any field: lhs = L + S + (K_X - K_Z) + 2C, left over after all four terms
    metrics[f"identity_any_field_closure_{tag}"] = metric(abs(r["closure"]), "", "lower")
    metrics[f"kinetic_mismatch_over_se_{tag}"] = metric(abs(r["kinetic_mismatch"]) / r["kinetic_mismatch_se"],
                                                        "SE", "lower")
    metrics[f"cross_over_se_{tag}"] = metric(abs(r["cross"]) / r["cross_se"], "SE", "lower")
metrics["w2sq_floor_moons"] = metric(floor_2d, "", "lower")

# %% [markdown]
# ## Rectified Diffusion: pairs, not straightness
#
# Wang et al. (2024) observe that a diffusion model trained on its own matched pairs
# $(x_0,\;x_1=\mathrm{ODE}(x_0))$ needs no straight path: every $x_t=\alpha(t)x_1+\sigma(t)x_0$ of
# a pair lies on one *known* curve, so a first-order solver in the path's own coordinates —
# DDIM: predict $\hat x_1,\hat x_0$ at $(x,t)$, jump to $\alpha(t')\hat x_1+\sigma(t')\hat x_0$ —
# is exact in one step when the predictions are. On the linear path DDIM is Euler.

# %%
show_source(ddim_sample)

# %% [markdown]
# The teacher is a diffusion model in the usual form: DDPM's VP path (linear $\beta$) with
# $\epsilon$-prediction, N(0, I) → moons; its pairs come from its probability-flow ODE (RK4). Then
# three students are trained on the same pairs:
#
# * **(a) VP, ε**: the teacher's path and parameterisation, warm-started from the teacher;
# * **(a′) VP, x₁**: the same curved path, predicting $x_1$;
# * **(b) linear**: the straight path with velocity prediction (2-rectified flow).
#
# All are sampled with DDIM (for the teacher too), and we also report Euler on each model's
# velocity and the straightness $S$ of its flow.

# %%
vp = VPLinearBetaPath()
gauss_lin = LinearPath()
rd_batch = lambda gen: (torch.randn(batch_size, 2, generator=gen), toy2d.sample_2d("moons", batch_size, gen))
teacher_obj = CFM(vp, prediction="epsilon")
teacher = fit(teacher_obj, rd_batch, steps_rd)
rz0, rz1 = model_pairs(teacher_obj.velocity(teacher), torch.randn(n_pairs, 2, generator=pair_gen),
                       "rk4", pair_steps, 0.0, vp.t_max)
rd_pairs = ReflowCoupling(rz0, rz1)
rd = {"teacher (VP, ε)": (teacher, vp, "epsilon")}
for name, path, pred in (("(a) VP, ε", vp, "epsilon"), ("(a′) VP, x₁", vp, "x1"),
                         ("(b) linear, v", gauss_lin, "velocity")):
    obj = CFM(path, coupling=rd_pairs, prediction=pred)
    rd[name] = (fit(obj, rd_pairs.batch(batch_size), steps_rd, init=teacher if pred == "epsilon" else None),
                path, pred)

# %%
g0 = torch.randn(n_eval, 2, generator=eval_gen)
g1 = toy2d.sample_2d("moons", n_eval, eval_gen)
rd_w2 = {}
for name, (net, path, pred) in rd.items():
    vel = lambda x, t, net=net, path=path, pred=pred: path.convert(net(x, t), x, t, pred, "velocity")
    r = {f"ddim{k}": wasserstein2_squared(ddim_sample(net, path, pred, g0, k).x, g1) for k in (1, 2, 4, 100)}
    r.update({f"euler{k}": wasserstein2_squared(integrate(vel, g0, "euler", k, 0.0, path.t_max).x, g1)
              for k in (1, 2, 4)})
    r["straightness"] = float(flow_terms(vel, g0, 100)["straightness"].mean())
    rd_w2[name] = r
cols = ("ddim1", "ddim2", "ddim4", "ddim100", "euler1", "euler2", "euler4", "straightness")
print(f"{'W2² to moons':18s}" + "".join(f"{c:>10s}" for c in cols))
for name, r in rd_w2.items():
    print(f"{name:18s}" + "".join(f"{r[c]:10.3f}" for c in cols))

# %% [markdown]
# The teacher needs many steps. Trained on its pairs, both the curved VP student predicting
# $x_1$ (a′) and the straight student (b) are good in one DDIM step, although (a′)'s flow is far
# from straight (its $S$ is large, and Euler on its velocity is poor): the matched pairs and a
# solver that follows the path's own geometry give the few-step gain, which is Rectified Diffusion's
# claim. Full run: one DDIM step W2² 41.7 (teacher; its best 4-step result is 1.09 with Euler),
# 0.21 for (a′) and 0.20 for (b), with straightness 9.8 for (a′) and 0.004 for (b). The ε-parameterised student (a) improves at 2–4 steps but **fails at one step**, and
# this is not a training problem: at $t=0$, $x_t=\alpha(0)x_1+\sigma(0)x_0$ with
# $\alpha(0)=0.0066$ on DDPM's schedule, so $\hat x_1=(x_t-\sigma\hat\epsilon)/\alpha$ multiplies the
# ε-error by 150. Whatever the pairs, an ε-network cannot say where a pure-noise point goes;
# the one-step result needs a parameterisation that does ($x_1$ or velocity), or a schedule
# whose $\alpha$ at the start is not near zero.

# %%
fig, ax = plt.subplots(figsize=(4.8, 3.2))
for name, r in rd_w2.items():
    ax.plot([1, 2, 4, 100], [r[f"ddim{k}"] for k in (1, 2, 4, 100)], "o-", label=name)
ax.set(xscale="log", yscale="log", xlabel="DDIM steps", ylabel="W2² to moons")
ax.legend(fontsize="small")
ax.set_title("Rectified Diffusion on N(0, I) → moons", fontsize="medium")
fig.tight_layout()

# %%
rd_tags = {"teacher (VP, ε)": "teacher", "(a) VP, ε": "a_vp_eps", "(a′) VP, x₁": "a_vp_x1",
           "(b) linear, v": "b_linear"}
for name, r in rd_w2.items():
    for c in cols:
        metrics[f"rd_{c}_{rd_tags[name]}"] = metric(r[c], "", "lower")

# %% [markdown]
# ## Time sampling (Esser et al., 2024, §3.1)
#
# The CFM loss weights all $t$ equally; a time density $\pi(t)$ reweights it. Esser et al.
# compare uniform $t$, the **logit-normal** $t=\mathrm{sigmoid}(u)$, $u\sim\mathcal N(m,s^2)$, with
# density $\pi_\text{ln}(t)=\frac{1}{s\sqrt{2\pi}}\frac{1}{t(1-t)}\exp\!\big(-\frac{(\mathrm{logit}\,t-m)^2}{2s^2}\big)$,
# and **mode sampling** with heavy tails:
#
# $$t=f_\text{mode}(u;s)=1-u-s\Big(\cos^2\!\frac{\pi u}{2}-1+u\Big),\qquad u\sim\mathcal U[0,1].$$
#
# $f'(u)=-1+s\big(\tfrac{\pi}{2}\sin\pi u-1\big)$ is negative for $-1\le s\le\frac{2}{\pi-2}$, so
# $f$ is a bijection of $[0,1]$ and the density is
# $\pi_\text{mode}(t;s)=1/|f'(f^{-1}(t))|$. Since $f(1-u)=1-f(u)$ it is symmetric about
# $1/2$, where it equals $1/(1-s(\pi/2-1))$: $s>0$ favours the middle of the path, $s=0$ is
# uniform, $s<0$ favours the ends. One function draws every training time in the package,
# `objectives.sample_time` (uniform, logit-normal, mode, and the constant $t\equiv0$ used for
# distillation above); `CFM(..., time_sampler="mode", time_scale=1.29)` selects it.

# %%
tt = torch.linspace(0.002, 0.998, 499)
fig, ax = plt.subplots(figsize=(4.8, 3.0))
ax.plot(tt, torch.ones_like(tt), label="uniform")
ln = torch.exp(-torch.logit(tt) ** 2 / 2) / (math.sqrt(2 * math.pi) * tt * (1 - tt))
ax.plot(tt, ln, label="logit-normal (0, 1)")
for s in (1.29, -0.5):
    ax.plot(tt, mode_time_density(tt, s), label=f"mode, s = {s}")
ax.set(xlabel="t", ylabel="density")
ax.legend(fontsize="small")
fig.tight_layout()

# %%
show_source(sample_time)

# %% [markdown]
# On sklearn's 8×8 digits (scaled to $[-1,1]$, N(0, I) source, linear path) we train two
# networks once per sampler and seed: the U-Net (base 16) and a tiny **patch transformer** in
# the style of DiT (Peebles & Xie, 2023), the backbone family Esser et al. scale up: 2×2
# patches (16 tokens), width 64, two adaLN-Zero blocks, 4 heads. Each is sampled with 8 and 32
# Euler steps and scored with the classifier-feature Fréchet distance of chapter 02 against the
# held-out digits, next to the real-vs-real floor (training vs held-out digits at the same $n$).
# The MNIST classifier reads these digits (a different hand-writing set, upsampled), so only
# ratios to the floor mean much.

# %%
(xtr, _), (xte, _) = images.load_digits_8x8()
dig_tr, dig_te = images.to_unit_interval(xtr, 17), images.to_unit_interval(xte, 17)
clf = fd.load_classifier(verbose=False)
feat_te = fd.features(dig_te[:n_fd], clf)
floor_gen = torch.Generator().manual_seed(seed + 3000)
floor_fd = fd.frechet_distance(fd.features(dig_tr[torch.randperm(len(dig_tr), generator=floor_gen)[:n_fd]], clf),
                               feat_te)
samplers = {"uniform": {}, "logit_normal": {"time_loc": 0.0, "time_scale": 1.0}, "mode": {"time_scale": 1.29}}
nets = {"unet": (lambda: UNet(channels=1, base=16, mults=(1, 2)), digits_seeds, 2e-3),
        "dit": (lambda: PatchTransformer(channels=1, image_size=8, patch=2, dim=64, depth=2, heads=4),
                dit_seeds, 2e-3)}
dig_batch = lambda gen: (torch.randn(digits_batch, 1, 8, 8, generator=gen),
                         dig_tr[torch.randint(0, len(dig_tr), (digits_batch,), generator=gen)])
fd_res, digit_samples, ms_step = {}, {}, {n: [] for n in nets}
z_fd = torch.randn(n_fd, 1, 8, 8, generator=torch.Generator().manual_seed(seed + 4000))
for nname, (make_net, n_seeds, lr_net) in nets.items():
    for sname, kw in samplers.items():
        obj = CFM(LinearPath(), time_sampler=sname, **kw)
        for sd in range(n_seeds):
            torch.manual_seed(seed + sd)
            res = train(make_net(), obj.loss, dig_batch, steps=digits_steps, lr=lr_net, seed=seed + sd,
                        ema_decay=0.99, progress=False, device="cpu")
            ms_step[nname].append(res.ms_per_step)
            for k in fd_steps:
                x = sample(res.ema, z_fd, "euler", k).x.clamp(-1, 1)
                fd_res[nname, sname, sd, k] = fd.frechet_distance(fd.features(x, clf), feat_te)
                if sd == 0 and k == fd_steps[-1]:
                    digit_samples[nname, sname] = x[:32]

# %%
# NBVAL_IGNORE_OUTPUT
for nname in nets:
    print(f"{nname} on 8x8 digits, batch {digits_batch}: {sum(ms_step[nname]) / len(ms_step[nname]):.1f} ms/step")

# %%
print(f"real-vs-real FD floor (n = {n_fd}): {floor_fd:.2f}")
fd_summary = {}
for nname, (_, n_seeds, _) in nets.items():
    for sname in samplers:
        for k in fd_steps:
            vals = torch.tensor([fd_res[nname, sname, sd, k] for sd in range(n_seeds)])
            fd_summary[nname, sname, k] = (float(vals.mean()), float(vals.max() - vals.min()))
            print(f"{nname:5s} {sname:13s} Euler {k:2d}: FD {fd_summary[nname, sname, k][0]:8.2f} "
                  f"(spread over {n_seeds} seeds {fd_summary[nname, sname, k][1]:.2f}), "
                  f"ratio to floor {fd_summary[nname, sname, k][0] / floor_fd:.2f}")
verdicts = {}
for nname, (_, n_seeds, _) in nets.items():
    for k in fd_steps:
        order = sorted(samplers, key=lambda s: fd_summary[nname, s, k][0])
        best, second = order[0], order[1]
        gap = fd_summary[nname, second, k][0] - fd_summary[nname, best, k][0]
        spread = max(fd_summary[nname, s, k][1] for s in samplers)
        gap_u = fd_summary[nname, "uniform", k][0] - min(fd_summary[nname, s, k][0] for s in ("logit_normal", "mode"))
        verdicts[nname, k] = n_seeds > 1 and gap_u > max(fd_summary[nname, s, k][1] for s in samplers)
        if n_seeds < 2:
            print(f"{nname} Euler {k}: best {best}, ahead of {second} by {gap:.2f}; one seed, no spread to compare")
            continue
        print(f"{nname} Euler {k}: best {best}, ahead of {second} by {gap:.2f} "
              f"({'outside' if gap > spread else 'within'} the seed spread {spread:.2f}); "
              f"best mid-weighted sampler beats uniform by {gap_u:.2f}: "
              f"{'outside' if verdicts[nname, k] else 'within'} the spread")

# %%
fig, axes = plt.subplots(2, 4, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1, 1, 1.1]})
for row, nname in zip(axes, nets):
    for ax, sname in zip(row, samplers):
        grid = digit_samples[nname, sname][:32, 0].reshape(4, 8, 8, 8).permute(0, 2, 1, 3).reshape(32, 64)
        ax.imshow(grid, cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(f"{nname}, {sname}: FD {fd_summary[nname, sname, fd_steps[-1]][0]:.1f} "
                     f"({fd_steps[-1]} steps)", fontsize="small")
        ax.axis("off")
    ax = row[3]
    for j, sname in enumerate(samplers):
        for k_i, k in enumerate(fd_steps):
            vals = [fd_res[nname, sname, sd, k] for sd in range(nets[nname][1])]
            ax.plot([j + 0.15 * k_i] * len(vals), vals, "o", color=f"C{k_i}", ms=4,
                    label=f"{k} Euler steps" if j == 0 else None)
    ax.axhline(floor_fd, color="k", ls=":", lw=1, label="real vs real")
    ax.set_xticks(range(len(samplers)), list(samplers), fontsize="small")
    ax.set(ylabel="FD (each seed)", title=f"{nname}: FD per seed")
    ax.legend(fontsize="small")
fig.tight_layout()

# %% [markdown]
# In the full run (400 steps per run, two seeds per network and sampler), both mid-weighted
# samplers beat uniform sampling by more than the seed spread, for both networks. U-Net, FD at
# 8 Euler steps: uniform 24.2 (spread 1.7), logit-normal 20.1 (1.1), mode 20.4 (0.9); at 32
# steps 18.1, 15.4 and 15.2 (floor 5.4). Patch transformer at 8 steps: uniform 72.0 (2.1),
# logit-normal 59.0 (5.3), mode 63.5 (3.0); at 32 steps 63.6, 52.1 and 55.2. Logit-normal and
# mode are within each other's seed spread for both networks: this toy does not rank them. The
# transformer is three times worse than the U-Net at the same number of steps (and about the
# same cost per step here, 117 against 149 ms under load): 400 steps are far from what a
# transformer without the convolution's locality prior needs, and it gains more from the
# mid-weighted samplers (13 FD points against 4). Two seeds are a thin spread, and Esser et al.
# measured at 10⁵+ steps on large images, so read this as agreement in direction only.

# %%
for nname in nets:
    suffix = "" if nname == "unet" else f"_{nname}"  # the U-Net keeps the chapter's original names
    for sname in samplers:
        for k in fd_steps:
            metrics[f"fd_euler{k}_{sname}{suffix}"] = metric(fd_summary[nname, sname, k][0], "", "lower")
            metrics[f"fd_spread_euler{k}_{sname}{suffix}"] = metric(fd_summary[nname, sname, k][1], "", "lower")
    for k in fd_steps:
        metrics[f"mid_weighted_beats_uniform_euler{k}{suffix}"] = metric(float(verdicts[nname, k]), "", "higher")
    metrics[f"ms_per_step_{nname}_digits"] = metric(sum(ms_step[nname]) / len(ms_step[nname]), "ms", "lower")
metrics["fd_floor_digits"] = metric(floor_fd, "", "lower")

# %% [markdown]
# ## Results

# %%
record("04_straight_paths", metrics, mode=mode, seed=seed, wall_s=time.perf_counter() - t_start)

# the chapter's claims, checked every run
assert metrics["gauss_identity_gap_over_se"]["value"] < 3, "exact field: identity within MC error"
assert abs(gid1["conditional_variance"] - math.pi * d_gauss * s_gauss / 2) < 4 * gid1["conditional_variance_se"]
assert metrics["gauss_kinetic_mismatch_over_se"]["value"] < 3 and metrics["gauss_cross_over_se"]["value"] < 3, \
    "exact field: both extra terms of the any-field identity vanish"
assert all(abs(r["closure"]) < 1e-5 * r["cost_x"] for r in ident.values()), "lhs = L + S + (K_X - K_Z) + 2C"
assert gid2["straightness"] < 1e-8, "the 2-RF of Gaussians is straight"
for k in (2, 3):
    a, b = ident[f"{k - 1}-RF"], ident[f"{k}-RF"]
    se = math.hypot(a["cost_z_se"], b["cost_z_se"])
    assert b["cost_z"] <= a["cost_z"] + 2 * se, f"reflow round {k} raised the transport cost"
assert ident["2-RF"]["straightness"] < ident["1-RF"]["straightness"] / 10, "reflow straightens"
# learned fields: the identity accounts for the cost change up to 10% of the coupling's cost (its SE is ~3%)
assert all(abs(r["gap"]) < 0.1 * r["cost_x"] for r in ident.values()), "identity gap too large"
assert w2["2-RF"]["euler1"] < w2["1-RF"]["euler1"] / (3 if quick else 5), "reflow makes one step work"
assert w2["3-RF distilled"]["euler1"] < w2["1-RF"]["euler1"] / 3
rd1 = {k: r["ddim1"] for k, r in rd_w2.items()}
teacher_best4 = min(rd_w2["teacher (VP, ε)"][c] for c in ("ddim4", "euler4"))
assert rd1["(a′) VP, x₁"] < teacher_best4 and rd1["(b) linear, v"] < teacher_best4, "pairs make one step work"
assert rd_w2["(a′) VP, x₁"]["straightness"] > 10 * rd_w2["(b) linear, v"]["straightness"], "(a') is curved"
assert all(v[0] > floor_fd for v in fd_summary.values()), "FD below the floor means a bug"
if not quick:  # full run: a mid-weighted sampler beats uniform by more than the seed spread
    assert all(verdicts.values()), verdicts

# %%
# NBVAL_IGNORE_OUTPUT
ResultsTable(metrics)

# %% [markdown]
# ## Summary
#
# * Rectified flow is CFM on the linear path; reflow is the same regression with a
#   **model-induced coupling**, the pairs $(Z_0,\mathrm{ODE}(Z_0))$ of the previous flow.
# * Exactly, $\mathbb E\|X_1-X_0\|^2-\mathbb E\|Z_1-Z_0\|^2=V(X)+S(Z)\ge0$: reflow never raises
#   the transport cost and gains the conditional variance and curvature it removes. Checked to
#   Monte Carlo error with the exact Gaussian field. For any field $v$ the exact statement has two
#   more terms, $L(v)+S(Z)+(K_X-K_Z)+2C$, all measured: for the reflowed networks here the gap is
#   mostly the kinetic mismatch $K_X-K_Z$, 4–9 standard errors, and longer training, lr decay, a
#   wider net or a fresh start did not close it.
# * One reflow round makes one Euler step nearly as good as a hundred; distillation at $t=0$ gives
#   a one-step model. Later rounds gain little and accumulate the teachers' errors.
# * Rectified Diffusion: the matched pairs plus a first-order solver in the path's own coordinates
#   give the few-step gain on a curved VP path too — if the network predicts something that
#   determines $x_1$ at pure noise ($x_1$ or velocity, not ε when $\alpha(0)\approx0$).
# * Mode and logit-normal time sampling put more training weight mid-path; at toy scale their
#   benefit must be read against the seed spread, for a U-Net and for a tiny patch transformer.
# * One function, `objectives.sample_time`, draws every training time: uniform, logit-normal,
#   mode, and the constant $t\equiv0$ of distillation.
#
# ## Exercises
#
# 1. Replace the independent 1-RF coupling by minibatch OT (chapter 01) and reflow once. How much
#    of the identity's right side is left for reflow to gain?
# 2. Sweep the number of pairs used for reflow (1000 to 50000). When does the 2-RF overfit its
#    pairs, and how does that show in the identity's gap?
# 3. Retrain student (a) with DDPM's schedule cut at $t_\text{min}$ where $\alpha(t_\text{min})=0.1$
#    (start the sampler there). Does one-step ε-sampling recover?
# 4. Derive the density of the logit-normal sampler and find the $s$ of mode sampling whose
#    density at $t=1/2$ matches the logit-normal (0, 1). Compare the two tails.
# 5. Retrain 2-RF with three times the steps and the learning rate stepped down 1e-3 → 3e-4 →
#    1e-4 (three `train` calls on the same network), and with `MLP(2, width=128)`. Record $L$, $S$,
#    $K_X-K_Z$ and $2C$. Which term of the four-term identity moves, and which does not? Where in
#    $t$ does the kinetic mismatch come from (split the time integral into ten bins)?
# 6. Give the patch transformer 4 blocks instead of 2, or patches of 4×4 (4 tokens), at the same
#    wall-clock budget as the U-Net. Which buys more FD per second on these digits?
