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
# # 09 · Fast sampling
#
# A trained flow or diffusion model is an ODE; sampling is solving it, and every solver step
# costs at least one network evaluation (NFE). This chapter keeps the trained networks fixed
# and asks how few evaluations give how much quality, and at what wall time:
#
# * **which solver** — Euler, midpoint, Heun, RK4, DDIM, DPM-Solver (orders 1–3) and
#   DPM-Solver++(2M), predictor–corrector, and dopri5 as the reference;
# * **where the steps go** — the same solver on a time-uniform and a log-SNR-uniform grid, and
#   BOSS's Bellman-optimal step sizes;
# * **what a step costs** — FlowTurbo's pseudo corrector (Heun at one NFE per step) and its
#   velocity refiner (a cached velocity corrected by a small network);
# * **which network a step calls** — blockwise flow matching, one smaller network per segment
#   of time.
#
# ## The solvers in minigen's time
#
# Time runs from the source at $t=0$ to the data at $t=1$, $x_t=\alpha_t x_1+\sigma_t x_0$.
# DPM-Solver's papers run from data ($t=0$) to noise ($t=T$); they only ever use the noise
# *level*, through the half log-SNR $\lambda=\log(\alpha/\sigma)$, so their formulas carry over
# unchanged with steps taken toward larger $\lambda$:
#
# | | DPM-Solver papers | minigen |
# |---|---|---|
# | time | $t$: 0 data → $T$ noise | $t$: 0 noise → 1 data |
# | log-SNR | $\lambda_t=\log(\alpha_t/\sigma_t)$, decreasing | same quantity, increasing in $t$ |
# | step | $t_{i-1}\to t_i$, $h_i=\lambda_{t_i}-\lambda_{t_{i-1}}>0$ | $s\to t>s$, $h=\lambda_t-\lambda_s>0$ |
# | noise prediction | $\epsilon_\theta(x_t,t)$ | $\hat x_0$ (`"epsilon"`; for a non-Gaussian source: the source prediction) |
# | data prediction | $x_\theta(x_t,t)$ | $\hat x_1$ (`"x1"`) |
#
# The probability-flow ODE of the path is $\frac{dx}{dt}=\frac{\sigma'}{\sigma}x+\big(\alpha'-
# \alpha\frac{\sigma'}{\sigma}\big)\hat x_1(x,t)$: a linear part solved exactly, and the network
# term integrated in $\lambda$. The first-order step is DDIM,
# $x_t=\alpha_t\hat x_1+\sigma_t\hat x_0$; on the linear path of flow matching it *is* Euler.
# A velocity network gives both predictions exactly (`GaussianPath.convert`), so every solver
# runs on every model here.

# %% tags=["parameters"]
from minigen.workbook.record import parameter_defaults, quick_from_env

quick = quick_from_env()  # True under make test and make lab (MINIGEN_QUICK); write False for a full run
seed = 0
steps_2d = 6000  # training steps of each 2D model
batch_2d = 256
n_eval = 2000  # 2D samples per W2 (exact EMD)
image_size = 14  # MNIST downsampled for CPU; 28 is the GPU-sized setting
image_steps = 2000  # each image U-Net
image_batch = 64
unet_base = 16
n_fd = 500  # generated images per FD (the floor uses as many real ones)
refiner_steps = 1000  # FlowTurbo's refiner
boss_fine = 100  # BOSS's fine grid
boss_refs = 256  # BOSS's reference trajectories
defaults = parameter_defaults(globals())  # before papermill's injected parameters

# %%
import time

import matplotlib.pyplot as plt
import torch

from minigen.data import toy2d
from minigen.eval import fd
from minigen.eval.flops import flops_per_sample
from minigen.eval.metrics import wasserstein2_squared
from minigen.nets.mlp import MLP
from minigen.nets.unet import UNet
from minigen.recipe import dpm_solver as dpm
from minigen.recipe.grid_solvers import integrate_on_grid
from minigen.recipe.objectives import CFM
from minigen.recipe.ode_solvers import integrate
from minigen.recipe.paths import LinearPath, VPCosinePath
from minigen.recipe.sde import SDE
from minigen.recipe.sde_solvers import predictor_corrector
from minigen.recipe.time_grids import log_snr, log_snr_times, uniform_times
from minigen.recipe.wrappers import converted, score_from_epsilon_model
from minigen.sampling import boss
from minigen.sampling.blockwise import BlockwiseVelocity, segment_cfm_loss
from minigen.sampling.flowturbo import (
    VelocityRefiner,
    flowturbo_sample,
    pseudo_corrector_sample,
    refiner_loss,
)
from minigen.train import train
from minigen.workbook.record import ResultsTable, apply_quick, metric, record
from minigen.workbook.viz import show_source

t_start = time.perf_counter()
mode = "quick" if quick else "full"
if quick:
    apply_quick(globals(), defaults, steps_2d=150, n_eval=300, image_steps=30, n_fd=100, refiner_steps=20,
                boss_fine=20, boss_refs=32)
print(f"{mode}: 2D models {steps_2d} steps, image U-Nets {image_steps} steps, {n_fd} images per FD")
metrics = {}
T0, T1 = 1e-3, 1 - 1e-3  # every solver of the comparison runs from T0 to T1 (finite log-SNR)
NFES = (4, 6, 10, 16)


def fit(model, loss, batches, steps, lr=1e-3, **kw):
    return train(model, loss, batches, steps=steps, lr=lr, seed=seed, grad_clip=1.0, lr_schedule="cosine",
                 progress=False, device="cpu", **kw)


def w2_of(x, ref):
    """Exact W2² to the reference, with the samples clipped to the box [-20, 20]² first: a
    diverged few-step solve (only seen with quick mode's barely trained models) then scores a
    large finite number instead of failing the run."""
    return wasserstein2_squared(torch.nan_to_num(x, 20.0, 20.0, -20.0).clamp(-20, 20), ref)


def timed(fn, *args, **kw):
    """(result, seconds) of one call fn(*args, **kw)."""
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


# %% [markdown]
# **What runs.** Full mode trains two 2D MLPs (a flow-matching model on 8gaussians → moons and
# a VP diffusion model on N(0, I) → moons), two image U-Nets on MNIST-5k 14×14 (flow matching
# and VP diffusion), FlowTurbo's refiner and two blockwise segment networks; everything else
# is sampling. Quick mode trains each for a few dozen steps: its figures say only that the code
# runs.
#
# ## Part 1 · Two 2D models and every solver
#
# The flow-matching model is chapter 01's I-CFM on 8gaussians → moons (independent pairs, so
# its paths cross and its field curves: the hard case for few steps). The diffusion model
# predicts the noise on the VP cosine path from N(0, I) to moons.

# %%
fm_path, vp_path = LinearPath(source_is_gaussian=False), VPCosinePath()
torch.manual_seed(seed)


def batch_8g(g):
    return toy2d.sample_2d("8gaussians", batch_2d, g), toy2d.sample_2d("moons", batch_2d, g)


def batch_normal(g):
    return toy2d.standard_normal(batch_2d, g), toy2d.sample_2d("moons", batch_2d, g)


res_fm2 = fit(MLP(2, width=128, depth=3, activation="silu"), CFM(fm_path).loss, batch_8g, steps_2d)
eps_obj = CFM(vp_path, prediction="epsilon")
res_vp2 = fit(MLP(2, width=128, depth=3, activation="silu"), eps_obj.loss, batch_normal, steps_2d)
eval_gen = torch.Generator().manual_seed(seed + 1)
x0_8g = toy2d.sample_2d("8gaussians", n_eval, eval_gen)
x0_n = toy2d.standard_normal(n_eval, eval_gen)
moons_ref = toy2d.sample_2d("moons", n_eval, eval_gen)
floor_2d = w2_of(toy2d.sample_2d("moons", n_eval, eval_gen), moons_ref)
print(f"2D models trained; W2² floor (two fresh moons draws of {n_eval}) {floor_2d:.4f}")

# %% [markdown]
# One table of predictions per model: the flow-matching network outputs a velocity, the
# diffusion network a noise; `converted` gives each solver the prediction it is written for,
# through the path's exact conversions. The DPM-Solver step, written once:

# %%
show_source(dpm.dpm_solver_step)


# %%
def predictions(model, path, src):
    """The velocity, source (x0) and data (x1) predictions of a network trained on ``src``."""
    v = converted(model, path, src, "velocity")
    if src == "velocity":  # any source: x0 and x1 from the velocity (no Gaussian needed)
        return v, (lambda x, t: path.x0_from_velocity(model(x, t), x, t)), \
            (lambda x, t: path.x1_from_velocity(model(x, t), x, t))
    return v, converted(model, path, src, "epsilon"), converted(model, path, src, "x1")


def run_solver(name, preds, path, x, nfe, grid="logsnr"):
    """One sampler by name at a budget of ``nfe`` evaluations -> SampleResult."""
    v, x0_hat, x1_hat = preds
    per = {"euler": 1, "ddim": 1, "midpoint": 2, "heun": 2, "rk4": 4}
    if name.startswith("dpm") and name != "dpm++2m":
        return dpm.dpm_solver(x0_hat, path, x, nfe, int(name[-1]), T0, T1)
    if name == "dpm++2m":
        return dpm.dpm_solver_pp_2m(x1_hat, path, x, nfe, T0, T1)
    steps = max(1, nfe // per[name])
    times = log_snr_times(path, steps, T0, T1) if grid == "logsnr" else uniform_times(steps, T0, T1)
    if name == "ddim":
        return dpm.ddim(x1_hat, path, x, times)
    return integrate_on_grid(v, x, times, name)


SOLVERS = ("euler", "midpoint", "heun", "rk4", "ddim", "dpm1", "dpm2", "dpm3", "dpm++2m")
RK = ("euler", "midpoint", "heun", "rk4")  # on the time-uniform grid; the exponential ones on log-SNR
models_2d = {"fm": (predictions(res_fm2.model, fm_path, "velocity"), fm_path, x0_8g),
             "vp": (predictions(res_vp2.model, vp_path, "epsilon"), vp_path, x0_n)}
w2, dopri = {}, {}
for key, (preds, path, x0) in models_2d.items():
    for name in SOLVERS:
        for nfe in NFES:
            res = run_solver(name, preds, path, x0, nfe, "uniform" if name in RK else "logsnr")
            w2[key, name, nfe] = w2_of(res.x, moons_ref)
    ref = integrate(preds[0], x0, "dopri5", t0=T0, t1=T1, rtol=1e-5, atol=1e-5)
    dopri[key] = (ref.nfe, w2_of(ref.x, moons_ref))
    print(f"{key}: dopri5 reference {ref.nfe} NFE, W2² {dopri[key][1]:.4f}")
sde_vp = SDE(vp_path)
score_vp = score_from_epsilon_model(res_vp2.model, sde_vp)
for nfe in NFES:  # predictor-corrector: nfe/2 Euler-Maruyama predictor steps, one Langevin corrector each
    pc = predictor_corrector(sde_vp, score_vp, (n_eval, 2), torch.Generator().manual_seed(seed + 2),
                             steps=nfe // 2, snr=0.16, n_corrector=1)
    w2["vp", "pc", nfe] = w2_of(pc.x, moons_ref)
print("W2² at NFE", NFES)
for key in models_2d:
    for name in (*SOLVERS, *(("pc",) if key == "vp" else ())):
        print(f"  {key} {name:>8}: " + "  ".join(f"{w2[key, name, n]:.3f}" for n in NFES))

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for ax, key, title in zip(axes, models_2d, ("flow matching, 8gaussians → moons", "VP diffusion, N(0, I) → moons")):
    for name in (*SOLVERS, *(("pc",) if key == "vp" else ())):
        ax.plot(NFES, [w2[key, name, n] for n in NFES], "o-", ms=3, label=name)
    ax.axhline(dopri[key][1], color="k", ls="--", lw=1, label=f"dopri5 ({dopri[key][0]} NFE)")
    ax.axhline(floor_2d, color="grey", ls=":", lw=1, label="floor")
    ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="W2² to moons", title=title)
    ax.set_xticks(NFES, [str(n) for n in NFES])
axes[1].legend(fontsize=7, ncol=2)
plt.tight_layout()
plt.show()

# %% [markdown]
# Read the two panels separately. On the diffusion model (a noise predictor on the VP path)
# the exponential integrators win clearly at low NFE: the exact linear part absorbs the stiff
# $\sigma'/\sigma$ term that Euler and Runge–Kutta must resolve step by step. On the
# flow-matching model the linear path has no stiff part to absorb (DDIM is Euler there), and
# what limits few-step sampling is the curvature of the learned field; the higher-order
# methods buy accuracy per step but pay 2–4 NFE for it.
#
# ## The grid matters
#
# The same solvers on the same NFE, once on a grid uniform in $t$ and once uniform in
# $\lambda$. On the VP path the log-SNR grid spends its steps near the data end, where
# $\alpha/\sigma$ changes fastest; on the linear path $\lambda=\operatorname{logit} t$, and the
# same rule crowds steps at *both* ends.

# %%
grid_w2 = {}
for key, (preds, path, x0) in models_2d.items():
    for name in ("euler", "ddim", "dpm++2m"):
        for grid in ("uniform", "logsnr"):
            if name == "dpm++2m":
                times = log_snr_times(path, 10, T0, T1) if grid == "logsnr" else uniform_times(10, T0, T1)
                res = dpm.dpm_solver_pp_2m(preds[2], path, x0, 10, times=times)
            else:
                res = run_solver(name, preds, path, x0, 10, grid)
            grid_w2[key, name, grid] = w2_of(res.x, moons_ref)
    print(f"{key}, NFE 10: " + ";  ".join(
        f"{n} uniform {grid_w2[key, n, 'uniform']:.3f} / log-SNR {grid_w2[key, n, 'logsnr']:.3f}"
        for n in ("euler", "ddim", "dpm++2m")))
lam_u = log_snr(vp_path, uniform_times(10, T0, T1))
print(f"VP path, 10 uniform steps: the last one spans {float(lam_u[-1] - lam_u[-2]):.1f} of the "
      f"{float(lam_u[-1] - lam_u[0]):.1f} units of log-SNR")

# %% [markdown]
# ## Part 2 · Images
#
# The same two models on MNIST-5k at 14×14: a flow-matching U-Net (velocity, linear path) and
# a VP diffusion U-Net (noise prediction, cosine path), equal size and training. The FD is
# computed on the features of chapter 02's MNIST classifier, always beside the real-vs-real
# floor at the same sample count.

# %%
x_tr, _ = fd.real_mnist_images("train", image_size)
clf = fd.load_classifier(verbose=False)
perm = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))
real_feats = fd.features(x_tr[perm[:n_fd]], clf)
floor = fd.real_vs_real_floor(n_fd, size=image_size, classifier=clf)["fd"]


def image_batches(g):
    idx = torch.randint(0, len(x_tr), (image_batch,), generator=g)
    return torch.randn(image_batch, 1, image_size, image_size, generator=g), x_tr[idx]


def unet(base=unet_base):
    return UNet(1, base=base, mults=(1, 2))


img_path = LinearPath()
res_fm_img = fit(unet(), CFM(img_path).loss, image_batches, image_steps, lr=2e-3)
res_vp_img = fit(unet(), CFM(vp_path, prediction="epsilon").loss, image_batches, image_steps, lr=2e-3)
x0_img = torch.randn(n_fd, 1, image_size, image_size, generator=torch.Generator().manual_seed(seed + 3))
flops_unet = flops_per_sample(res_fm_img.model, torch.zeros(4, 1, image_size, image_size), torch.zeros(4))


def fd_of(x):
    return fd.frechet_distance(real_feats, fd.features(x.clamp(-1, 1), clf))


models_img = {"fm": predictions(res_fm_img.model, img_path, "velocity"),
              "vp": predictions(res_vp_img.model, vp_path, "epsilon")}
paths_img = {"fm": img_path, "vp": vp_path}
print(f"real-vs-real floor FD {floor:.3f} (n = {n_fd}); U-Net {flops_unet / 1e6:.1f} MFLOPs per evaluation")

# %%
# NBVAL_IGNORE_OUTPUT
fd_img, ms_img = {}, {}
IMG_SOLVERS = {"fm": ("euler", "heun", "dpm2", "dpm++2m"), "vp": ("euler", "ddim", "dpm2", "dpm3", "dpm++2m")}
IMG_NFES = (4, 10)
for key, preds in models_img.items():
    for name in IMG_SOLVERS[key]:
        for nfe in IMG_NFES:
            res, sec = timed(run_solver, name, preds, paths_img[key], x0_img, nfe,
                             "uniform" if name in RK else "logsnr")
            fd_img[key, name, nfe], ms_img[key, name, nfe] = fd_of(res.x), 1000 * sec / n_fd
teacher, sec = timed(integrate_on_grid, models_img["fm"][0], x0_img, uniform_times(100, T0, T1), "euler")
fd_img["fm", "euler", 100], ms_img["fm", "euler", 100] = fd_of(teacher.x), 1000 * sec / n_fd
vp_ref, sec = timed(dpm.dpm_solver_pp_2m, models_img["vp"][2], vp_path, x0_img, 50, T0, T1)
fd_img["vp", "dpm++2m", 50], ms_img["vp", "dpm++2m", 50] = fd_of(vp_ref.x), 1000 * sec / n_fd
for key in models_img:
    print(f"{key}: " + ";  ".join(f"{n}@{k} FD {v:.1f} ({ms_img[kk, n, k]:.1f} ms/image)"
                                 for (kk, n, k), v in fd_img.items() if kk == key))

# %% [markdown]
# ## Part 3 · BOSS: where to put K Euler steps
#
# BOSS (Nguyen et al., 2023) keeps Euler and chooses its step sizes. From a few hundred
# reference trajectories on a fine grid it tabulates the error of every single Euler jump
# $t_j\to t_k$, and a dynamic programme finds the K jumps of least total error:

# %%
show_source(boss.bellman_steps)

# %%
fine_times = uniform_times(boss_fine, T0, T1)
v_fm2 = models_2d["fm"][0][0]
v_img = models_img["fm"][0]
ref_gen = torch.Generator().manual_seed(seed + 4)
costs = {}
for key, v, x_ref in (("2d", v_fm2, toy2d.sample_2d("8gaussians", boss_refs, ref_gen)),
                      ("img", v_img, torch.randn(min(boss_refs, 64), 1, image_size, image_size, generator=ref_gen))):
    traj, vel = boss.reference_trajectories(v, x_ref, fine_times, method="rk4", substeps=1)
    costs[key] = boss.euler_jump_costs(traj, vel, fine_times)
BOSS_NFES = (2, 4, 6, 10)
boss_w2, boss_fd, boss_grids = {}, {}, {}
for k in BOSS_NFES:
    for key in ("2d", "img"):
        idx, _ = boss.bellman_steps(costs[key], k)
        boss_grids[key, k] = fine_times[idx]
    boss_w2["boss", k] = w2_of(integrate_on_grid(v_fm2, x0_8g, boss_grids["2d", k]).x, moons_ref)
    boss_w2["uniform", k] = w2_of(integrate_on_grid(v_fm2, x0_8g, uniform_times(k, T0, T1)).x, moons_ref)
    if k in (4, 10):
        boss_fd["boss", k] = fd_of(integrate_on_grid(v_img, x0_img, boss_grids["img", k]).x)
        boss_fd["uniform", k] = fd_img.get(("fm", "euler", k)) or fd_of(
            integrate_on_grid(v_img, x0_img, uniform_times(k, T0, T1)).x)
for k in BOSS_NFES:
    line = f"Euler, {k:>2} steps: W2² uniform {boss_w2['uniform', k]:.3f} -> BOSS {boss_w2['boss', k]:.3f}"
    if k in (4, 10):
        line += f";  image FD uniform {boss_fd['uniform', k]:.1f} -> BOSS {boss_fd['boss', k]:.1f}"
    print(line)

# %%
fig, ax = plt.subplots(figsize=(8, 2.4))
for i, k in enumerate(BOSS_NFES):
    for key, c in (("2d", "C0"), ("img", "C3")):
        ax.plot(boss_grids[key, k].numpy(), [i + (0.15 if key == "img" else -0.15)] * (k + 1), "|-", color=c,
                ms=10, label=("2D flow" if key == "2d" else "image flow") if i == 0 else None)
ax.set(yticks=range(len(BOSS_NFES)), yticklabels=[f"K = {k}" for k in BOSS_NFES], xlabel="t (0 noise, 1 data)",
       title="BOSS's Euler steps")
ax.legend(fontsize=8, loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Part 4 · FlowTurbo: cheaper steps
#
# Along a sampling trajectory the velocity changes slowly. The **pseudo corrector** reuses the
# velocity Heun computes at its predictor as the next step's first evaluation — Heun's
# accuracy at one NFE per step. The **velocity refiner** goes further: a network much smaller
# than the teacher, trained to predict the change of velocity between two steps from the new
# state and the cached velocity, replaces the teacher in the last steps.

# %%
show_source(pseudo_corrector_sample)

# %%
refiner = VelocityRefiner(UNet(1, base=8, mults=(1, 2), cond_channels=1), concat=False)
res_ref = fit(refiner, refiner_loss(v_img, img_path, h_max=0.25), image_batches, refiner_steps, lr=2e-3)
flops_ref = flops_per_sample(res_ref.model, torch.zeros(4, 1, image_size, image_size),
                             torch.zeros(4, 1, image_size, image_size), torch.zeros(4))
TURBO = {"heun": (4, 4, 0), "pseudo": (8, 0, 8), "turbo": (8, 0, 3)}  # grid steps, Heun steps, pseudo steps
turbo = {}
for name, (k, h, p_) in TURBO.items():
    grid = uniform_times(k, T0, T1)
    if name == "pseudo":
        (out, sec) = timed(pseudo_corrector_sample, v_img, x0_img, grid)
        refines = 0
    else:
        ((out, refines), sec) = timed(flowturbo_sample, v_img, res_ref.model, x0_img, grid, h, p_)
    turbo[name] = {"fd": fd_of(out.x), "nfe": out.nfe, "refines": refines, "ms": 1000 * sec / n_fd,
                   "nfe_equiv": out.nfe + refines * flops_ref / flops_unet}
    print(f"{name:>6}: {k} steps, {out.nfe} teacher NFE + {refines} refiner calls "
          f"({turbo[name]['nfe_equiv']:.2f} NFE in FLOPs); FD {turbo[name]['fd']:.1f}")
print(f"refiner: {flops_ref / flops_unet:.2f} of the teacher's FLOPs per call")
pc2d = {k: w2_of(pseudo_corrector_sample(v_fm2, x0_8g, uniform_times(k - 1, T0, T1)).x, moons_ref)
        for k in (4, 6, 10)}
print("2D pseudo corrector W2² at NFE 4, 6, 10: " + ", ".join(f"{v:.3f}" for v in pc2d.values()))

# %%
# NBVAL_IGNORE_OUTPUT
for name, r in turbo.items():
    print(f"{name:>6}: {r['ms']:.2f} ms per image")

# %% [markdown]
# ## Part 5 · Blockwise flow matching: a smaller network per segment
#
# Split $[0, 1]$ at $t=0.5$ and train one half-width U-Net on each half (each sees only its
# own times), for the teacher's number of steps each. A sampler step calls one of them, at a
# quarter of the teacher's FLOPs.

# %%
EDGES = (0.0, 0.5, 1.0)
seg_res = [fit(unet(unet_base // 2), segment_cfm_loss(img_path, lo, hi), image_batches, image_steps, lr=2e-3)
           for lo, hi in zip(EDGES[:-1], EDGES[1:])]
blockwise = BlockwiseVelocity([r.model for r in seg_res], EDGES)
flops_block = flops_per_sample(seg_res[0].model, torch.zeros(4, 1, image_size, image_size), torch.zeros(4))
block_fd = {}
for k in (4, 10, 20):
    out, sec = timed(integrate_on_grid, blockwise, x0_img, uniform_times(k, T0, T1), "euler")
    block_fd[k] = (fd_of(out.x), 1000 * sec / n_fd)
    if ("fm", "euler", k) not in fd_img:
        fd_img["fm", "euler", k] = fd_of(integrate_on_grid(v_img, x0_img, uniform_times(k, T0, T1)).x)
for k, (f, _) in block_fd.items():
    print(f"Euler {k:>2} steps: blockwise FD {f:.1f} at {k * flops_block / 1e6:.0f} MFLOPs; one U-Net FD "
          f"{fd_img['fm', 'euler', k]:.1f} at {k * flops_unet / 1e6:.0f} MFLOPs")

# %% [markdown]
# ## The frontier: quality against NFE and against wall time
#
# Every method of the chapter on one plot per data set. NFE counts network evaluations of the
# full-size model; FlowTurbo's refiner calls are converted to teacher-NFE by their FLOPs, the
# blockwise networks' evaluations likewise.

# %%
frontier = {("FM " + n): [(k, fd_img["fm", n, k]) for k in IMG_NFES if ("fm", n, k) in fd_img]
            for n in IMG_SOLVERS["fm"]}
frontier.update({("VP " + n): [(k, fd_img["vp", n, k]) for k in IMG_NFES] for n in IMG_SOLVERS["vp"]})
frontier["FM euler"] = sorted((k, fd_img["fm", "euler", k]) for (m, n, k) in fd_img if m == "fm" and n == "euler")
frontier["BOSS"] = [(k, boss_fd["boss", k]) for k in (4, 10)]
frontier["FlowTurbo"] = [(r["nfe_equiv"], r["fd"]) for r in turbo.values()]
frontier["blockwise"] = [(k * flops_block / flops_unet, f) for k, (f, _) in block_fd.items()]
fig, ax = plt.subplots(figsize=(6.5, 4))
for name, pts in frontier.items():
    ax.plot(*zip(*pts), "o-", ms=3, label=name)
ax.axhline(floor, color="grey", ls=":", label="real-vs-real floor")
ax.set(xscale="log", yscale="log", xlabel="NFE (teacher-equivalent)", ylabel="FD", title="MNIST 14×14")
ax.legend(fontsize=7, ncol=2)
plt.tight_layout()
plt.show()

# %% [markdown]
# The same points against the measured sampling time per image are in the results table
# (`ms_*`); `benchmarks/frontier.py` regenerates both frontiers from the results files.
#
# ## The figures of merit

# %%
def uniform_cost(cost, k):
    n = cost.shape[0] - 1
    idx = [round(i * n / k) for i in range(k + 1)]
    return float(sum(cost[a, b] for a, b in zip(idx[:-1], idx[1:])))


boss_cost_ratio = {(key, k): boss.bellman_steps(costs[key], k)[1] / uniform_cost(costs[key], k)
                   for key in costs for k in (2, 4, 10)}
metrics.update({
    "w2sq_floor": metric(floor_2d, "", "lower"),
    "fd_floor": metric(floor, "", "lower"),
    "fd_teacher_euler100": metric(fd_img["fm", "euler", 100], "", "lower"),
    "fd_ratio_teacher_euler100": metric(fd_img["fm", "euler", 100] / floor, "x", "lower"),
    "flops_unet_mflops": metric(flops_unet / 1e6, "MFLOPs", "lower"),
    "flops_ratio_refiner_over_teacher": metric(flops_ref / flops_unet, "x", "lower"),
    "flops_ratio_block_over_teacher": metric(flops_block / flops_unet, "x", "lower"),
    "image_steps": metric(float(image_steps), "", "higher"),
})
for (key, name, nfe), v in w2.items():
    metrics[f"w2sq_{key}_{name}_nfe{nfe}"] = metric(v, "", "lower")
for key, (n, v) in dopri.items():
    metrics[f"w2sq_{key}_dopri5"] = metric(v, "", "lower")
    metrics[f"nfe_{key}_dopri5"] = metric(float(n), "", "lower")
for (key, name, grid), v in grid_w2.items():
    metrics[f"w2sq_grid_{key}_{name}_{grid}_nfe10"] = metric(v, "", "lower")
for (key, name, nfe), v in fd_img.items():
    metrics[f"fd_{key}_{name}_nfe{nfe}"] = metric(v, "", "lower")
for (key, name, nfe), v in ms_img.items():
    metrics[f"ms_{key}_{name}_nfe{nfe}"] = metric(v, "ms", "lower")
for (kind, k), v in boss_w2.items():
    metrics[f"w2sq_euler_{kind}_nfe{k}"] = metric(v, "", "lower")
for (kind, k), v in boss_fd.items():
    metrics[f"fd_euler_{kind}_nfe{k}"] = metric(v, "", "lower")
for k in BOSS_NFES:
    metrics[f"ratio_w2sq_boss_over_uniform_nfe{k}"] = metric(boss_w2["boss", k] / boss_w2["uniform", k], "x", "lower")
for k in (4, 10):
    metrics[f"ratio_fd_boss_over_uniform_nfe{k}"] = metric(boss_fd["boss", k] / boss_fd["uniform", k], "x", "lower")
for (key, k), v in boss_cost_ratio.items():
    metrics[f"boss_cost_ratio_{key}_nfe{k}"] = metric(v, "x", "lower")
for name, r in turbo.items():
    metrics[f"fd_flowturbo_{name}"] = metric(r["fd"], "", "lower")
    metrics[f"nfe_flowturbo_{name}"] = metric(float(r["nfe"]), "", "lower")
    metrics[f"nfe_equiv_flowturbo_{name}"] = metric(r["nfe_equiv"], "", "lower")
    metrics[f"ms_flowturbo_{name}"] = metric(r["ms"], "ms", "lower")
for k, v in pc2d.items():
    metrics[f"w2sq_fm_pseudo_nfe{k}"] = metric(v, "", "lower")
for k, (f, ms) in block_fd.items():
    metrics[f"fd_blockwise_nfe{k}"] = metric(f, "", "lower")
    metrics[f"ms_blockwise_nfe{k}"] = metric(ms, "ms", "lower")
    metrics[f"ratio_fd_blockwise_over_single_nfe{k}"] = metric(f / fd_img["fm", "euler", k], "x", "lower")
for other in ("ddim", "euler"):
    metrics[f"ratio_w2sq_dpmpp_over_{other}_vp_nfe10"] = metric(w2["vp", "dpm++2m", 10] / w2["vp", other, 10], "x",
                                                                 "lower")
    metrics[f"ratio_fd_dpmpp_over_{other}_vp_nfe10"] = metric(fd_img["vp", "dpm++2m", 10] / fd_img["vp", other, 10],
                                                               "x", "lower")
best4 = min((v, name) for (key, name, nfe), v in w2.items() if key == "fm" and nfe == 4)
metrics.update({
    "shared_w2sq_8gaussians-moons_nfe4": metric(best4[0], "", "lower"),
    "shared_w2sq_8gaussians-moons_adaptive": metric(dopri["fm"][1], "", "lower"),
    "shared_fd_ratio_mnist14": metric(fd_img["fm", "euler", 100] / floor, "x", "lower"),
    "shared_nfe": metric(100.0, "", "lower"),
    "shared_train_s": metric(res_fm_img.wall_s, "s", "lower"),
    "shared_sample_ms": metric(ms_img["fm", "euler", 100], "ms", "lower"),
})
print(f"best 2D flow-matching solver at NFE 4: {best4[1]} (W2² {best4[0]:.3f})")
record("09_fast_sampling", metrics, mode=mode, seed=seed, wall_s=time.perf_counter() - t_start)

# the chapter's claims, checked every run
assert all(v <= 1 + 1e-12 for v in boss_cost_ratio.values()), "the Bellman schedule costs no more than uniform"
assert turbo["pseudo"]["nfe"] == 9 and turbo["heun"]["nfe"] == 8, "NFE counts of the pseudo corrector and Heun"
# the full-mode claims are the chapter's targets in notebooks/09_fast_sampling.toml (make check)

# %%
# NBVAL_IGNORE_OUTPUT
ResultsTable(metrics)

# %% [markdown]
# ## Summary
#
# * One solver interface covers the field: fixed-step Runge–Kutta on any grid, DDIM and
#   DPM-Solver as exponential integrators in log-SNR, predictor–corrector for the SDE, and
#   dopri5 as the reference; every sampler counts its NFE, and every network serves every
#   solver through the path's exact prediction conversions.
# * On a diffusion model (noise prediction, VP path) the exponential integrators win at low
#   NFE; on a flow-matching model of the linear path DDIM is Euler, and the limit is the
#   field's curvature, not stiffness.
# * Where the steps go matters as much as which solver takes them: log-SNR grids for the
#   exponential integrators, and BOSS's dynamic programme for Euler, whose schedule provably
#   has the least summed one-jump error on the fine grid.
# * FlowTurbo's pseudo corrector keeps Heun's quality at about half its NFE, and a refiner a
#   fraction of the teacher's size replaces late evaluations; blockwise networks cut the
#   FLOPs per step. The frontier plots put every method on one axis of cost.
#
# ## Exercises
#
# 1. Derive DPM-Solver-2's update from the exact solution
#    $x_t=\frac{\alpha_t}{\alpha_s}x_s-\alpha_t\int_{\lambda_s}^{\lambda_t}e^{-\lambda}\hat\epsilon\,d\lambda$
#    by expanding $\hat\epsilon$ to first order around $\lambda_s$; why does $r_1=\tfrac12$
#    cancel the difference term?
# 2. BOSS's second half fine-tunes the network on its chosen steps. Fine-tune the 2D flow for
#    four Euler steps on the BOSS grid (regress each jump's endpoint) and compare with the
#    schedule alone.
# 3. Train the refiner on the teacher's *own* sampling trajectories (not on Euler steps from
#    path samples). Does the FlowTurbo FD improve?
# 4. Blockwise with four segments: is it the network size or the specialisation that costs
#    quality? Train one half-width network on all of $[0, 1]$ for comparison.
