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
# # 10 · One-step models
#
# A flow-matching model samples by integrating its velocity field, tens of network
# evaluations per sample; one Euler step of a model trained on independent pairs lands the
# samples at the conditional mean, a blur (chapter 01). This chapter trains models whose
# network *is* the jump: the **flow map** $X_{t\to r}$ of the probability-flow ODE, written
# through the **average velocity** $u(x,t,r)$. MeanFlow learns $u$ from scratch with an
# identity that needs one Jacobian-vector product; consistency training and distillation
# learn it by self-consistency along trajectories; flow map distillation *without data*
# learns it from a teacher and prior samples alone; DM1 adds a dispersive regulariser to a
# MeanFlow policy. All on 8gaussians → moons, MNIST-5k 14×14 and a toy multi-modal action task.
#
# ## Average velocity and flow map, in minigen's convention
#
# With $t=0$ noise and $t=1$ data, the flow map from $t$ to $r\ge t$ and the average velocity are
#
# $$X_{t\to r}(x)=x+(r-t)\,u(x,t,r),\qquad u(x_t,t,r)=\frac1{r-t}\int_t^r v(x_s,s)\,ds ,$$
#
# so $X_{t\to t}=\mathrm{id}$ is built into the parametrisation and $u(x,t,t)=v(x,t)$. One
# network `model(x, t, r=r)` ({py:class}`minigen.nets.two_time.TwoTimeMLP`,
# {py:class}`~minigen.nets.two_time.TwoTimeUNet`; `r=None` means $r=t$) serves every method.
# MeanFlow (Geng et al., 2025) writes the path the other way round; the mapping, once:
#
# | | MeanFlow paper | minigen |
# |---|---|---|
# | path | $z_\tau=(1-\tau)x+\tau\epsilon$, noise at $\tau=1$ | $x_t=t\,x_1+(1-t)\,x_0$, noise at $t=0$ |
# | times | $r\le\tau$, jump down from $\tau$ to $r$ | $t\le r$, jump up from $t$ to $r$ ($t=1-\tau$) |
# | velocity | $v=\epsilon-x=dz/d\tau$ | $v=x_1-x_0=dx/dt$ ($=-v_\text{paper}$) |
# | average velocity | $u(z,r,\tau)$, $z_r=z_\tau-(\tau-r)\,u$ | $u(x,t,r)$, $x_r=x_t+(r-t)\,u$ ($=-u_\text{paper}$) |
# | identity | $u=v-(\tau-r)\,\frac{du}{d\tau}$ | $u=v-(t-r)\,\frac{du}{dt}$ |
#
# **The identity in our convention.** Differentiate $(r-t)\,u(x_t,t,r)=\int_t^r v(x_s,s)\,ds$
# in $t$ along the trajectory, $r$ fixed: $-u+(r-t)\frac{du}{dt}=-v(x_t,t)$, so
#
# $$u(x_t,t,r)=v(x_t,t)-(t-r)\,\frac{d}{dt}u(x_t,t,r),\qquad
#   \frac{du}{dt}=v\cdot\partial_x u+\partial_t u ,$$
#
# the same form as the paper's. The total derivative is one forward-mode JVP of
# $f(z,r,t)=u_\theta(z,t,r)$ with tangent $(v,0,1)$; the target
# $u_\text{tgt}=v-(t-r)\,\mathrm{sg}(du/dt)$ uses the conditional velocity $v=x_1-x_0$ (its
# conditional expectation is the marginal one, as in flow matching).

# %% tags=["parameters"]
from minigen.workbook.record import parameter_defaults, quick_from_env

quick = quick_from_env()  # True under make test and make lab (MINIGEN_QUICK); write False for a full run
seed = 0
steps_2d = 8000  # training steps of each 2D model trained from scratch (flow matching, MeanFlow, CT)
distill_steps = 4000  # each 2D student distilled from the flow-matching teacher
batch_2d = 256
width_2d = 128  # the two-time MLP, 3 hidden layers, SiLU
share_r_neq_t = 0.5  # MeanFlow's share of pairs with r different from t (paper 0.25)
adaptive_p = 0.5  # MeanFlow's adaptive loss weight power (paper 1.0)
time_loc = 0.8  # MeanFlow's logit-normal location in our time (the paper's -0.4 is +0.4 here)
ct_dt = 0.02  # the consistency step to the neighbouring point
n_eval = 2000  # fresh points for exact W2 (EMD)
image_size = 14  # MNIST downsampled for CPU; 28 is the GPU-sized setting
teacher_steps = 3000  # the flow-matching U-Net teacher
student_steps = 1500  # the one-step image student, initialised from the teacher
teacher_nfe = 100  # Euler steps of the teacher's reference FD
n_fd = 1000  # generated images per FD (the floor uses as many real ones)
action_steps = 4000  # each DM1 policy
dispersive_weight = 0.5
student_dt = 0.05  # the image student's consistency step
student_lr = 2e-4
twin_steps = 3000  # each TwinFlow run, with and without its self-adversarial term
defaults = parameter_defaults(globals())  # before papermill's injected parameters

# %%
import time

import matplotlib.pyplot as plt
import torch

from minigen.data import toy2d
from minigen.eval import fd
from minigen.eval.metrics import wasserstein2_squared
from minigen.nets.two_time import TwoTimeMLP, TwoTimeUNet
from minigen.nets.unet import UNet
from minigen.onestep.actions import ModalActions
from minigen.onestep.data_free import FlowMapDistillation, lagrangian_target
from minigen.onestep.dispersive import dispersive_loss, with_dispersion
from minigen.onestep.flow_map import Consistency, sample_flow_map
from minigen.onestep.gaussian import GaussianLinearFlow
from minigen.onestep.meanflow import MeanFlow, meanflow_target
from minigen.onestep.twinflow import TwinFlow, branch
from minigen.recipe.objectives import CFM
from minigen.recipe.ode_solvers import sample
from minigen.recipe.paths import LinearPath
from minigen.train import train
from minigen.workbook.record import ResultsTable, apply_quick, key_number, metric, record
from minigen.workbook.viz import scatter, show_source

torch.set_num_threads(1)
t_start = time.perf_counter()
mode = "quick" if quick else "full"
if quick:
    apply_quick(globals(), defaults, steps_2d=400, distill_steps=60, batch_2d=128, n_eval=300,
                teacher_steps=20, student_steps=8, teacher_nfe=10, n_fd=200, action_steps=200, twin_steps=60)
print(f"{mode}: 2D {steps_2d} steps (students {distill_steps}), batch {batch_2d}; images: teacher "
      f"{teacher_steps} steps, students {student_steps}; policies {action_steps} steps")
metrics, wall = {}, {}

# %% [markdown]
# **What runs.** Full mode trains on 8gaussians → moons (independent pairs, batch 256) a
# flow-matching model, MeanFlow and consistency training for 8000 steps each, then four
# students of the flow-matching teacher for 4000 steps each (consistency distillation, the
# MeanFlow loss with the teacher's velocity, and flow map distillation with and without
# data); on MNIST-5k 14×14 a flow-matching U-Net teacher (3000 steps) and a consistency-distilled
# one-step student (1500 steps); two MeanFlow policies on the action task; and TwinFlow with and
# without its self-adversarial term (3000 steps each). Quick mode runs each for a few dozen steps: its
# figures say only that the code runs.
#
# ## The identity, checked in closed form
#
# For a Gaussian source and a Gaussian target on the linear path the flow map is affine,
# $X_{t\to r}(x)=\mu_r+\frac{\sigma_r}{\sigma_t}(x-\mu_t)$
# ({py:class}`minigen.onestep.gaussian.GaussianLinearFlow`), so the true average velocity is
# known. The MeanFlow target computed from it by the JVP must return it exactly; the wrong
# tangents — no $\partial_t$, or $\partial_r$ in place of $\partial_t$ — must not.

# %%
show_source(meanflow_target)

# %%
gauss = GaussianLinearFlow(torch.tensor([-2.0, 1.0]), torch.tensor([1.0, 0.5]),
                           torch.tensor([3.0, -1.0]), torch.tensor([0.3, 2.0]))
g = torch.Generator().manual_seed(seed)
z = 2 * torch.randn(512, 2, generator=g, dtype=torch.float64)
t_ = 0.9 * torch.rand(512, generator=g, dtype=torch.float64)
r_ = t_ + (1 - t_) * torch.rand(512, generator=g, dtype=torch.float64)
v_ = gauss.velocity(z, t_)
u_true = gauss.average_velocity(z, t_, r_)
identity_err = {}
for name, tangent in {"(v, 0, 1)": (1, 0, 1), "(v, 0, 0)": (1, 0, 0), "(v, 1, 0)": (1, 1, 0)}.items():
    u, dudt = torch.func.jvp(lambda z_, r__, t__: gauss(z_, t__, r=r__), (z, r_, t_),
                             (tangent[0] * v_, tangent[1] * torch.ones_like(r_), tangent[2] * torch.ones_like(t_)))
    identity_err[name] = float((u_true - (v_ - (t_ - r_)[:, None] * dudt)).abs().max())
    print(f"tangent {name}: max |u - (v - (t - r) du/dt)| {'< 1e-10' if identity_err[name] < 1e-10 else f'= {identity_err[name]:.3f}'}")
assert identity_err["(v, 0, 1)"] < 1e-10 and min(identity_err["(v, 0, 0)"], identity_err["(v, 1, 0)"]) > 0.1

# %% [markdown]
# ## MeanFlow against flow matching on 8gaussians → moons
#
# The loss ({py:class}`minigen.onestep.meanflow.MeanFlow`): pairs $(t,r)$ are two
# logit-normal draws sorted (the paper's $(-0.4,1)$ in its time is $(+0.4,1)$ in ours), a
# share `share_r_neq_t` of them keep $r\ne t$ and the rest train the instantaneous velocity;
# each sample's squared error is weighted by $\mathrm{sg}\,1/(\|\Delta\|^2+c)^p$. We use a
# share of 0.5, $p=0.5$ and a location of $+0.8$ rather than the paper's 0.25, 1 and $+0.4$ (the
# scratch runs that chose them are listed after the results). Flow matching
# gets the same network (the two-time MLP
# called at $r=t$), the same batch and the same number of steps: the same training budget.

# %%
show_source(MeanFlow.loss)

# %%
def batch_2d_fn(gen):
    return toy2d.sample_2d("8gaussians", batch_2d, gen), toy2d.sample_2d("moons", batch_2d, gen)


def net_2d(cond_dim=0):
    torch.manual_seed(seed)
    return TwoTimeMLP(2, width=width_2d, depth=3, cond_dim=cond_dim)


def fit(model, loss, batches, steps, lr=1e-3, **kw):
    return train(model, loss, batches, steps=steps, lr=lr, seed=seed, ema_decay=0.999, grad_clip=1.0,
                 lr_schedule="cosine", progress=False, device="cpu", **kw)


eval_gen = torch.Generator().manual_seed(seed + 1000)
x0_eval = toy2d.sample_2d("8gaussians", n_eval, eval_gen)
x1_eval = toy2d.sample_2d("moons", n_eval, eval_gen)
w2_floor = wasserstein2_squared(toy2d.sample_2d("moons", n_eval, eval_gen), x1_eval)
w2, sample_ms, runs = {}, {}, {}


def measure(name, sampler, nfes):
    for k in nfes:
        t0 = time.perf_counter()
        x = sampler(k)
        sample_ms[name, k] = 1000 * (time.perf_counter() - t0)
        w2[name, k] = wasserstein2_squared(x, x1_eval)


t0 = time.perf_counter()
cfm = CFM(LinearPath(source_is_gaussian=False))
runs["fm"] = fit(net_2d(), cfm.loss, batch_2d_fn, steps_2d)
teacher_2d = runs["fm"].ema
measure("fm", lambda k: sample(teacher_2d, x0_eval, "euler", k).x, (1, 2, 4, 100))
mf = MeanFlow(share_r_neq_t=share_r_neq_t, adaptive_p=adaptive_p, time_loc=time_loc)
runs["meanflow"] = fit(net_2d(), mf.loss, batch_2d_fn, steps_2d)
measure("meanflow", lambda k: sample_flow_map(runs["meanflow"].ema, x0_eval, k).x, (1, 2, 4))
wall["2d_meanflow_fm"] = time.perf_counter() - t0
print(f"two fresh moons samples: W2² = {w2_floor:.4f}")
for name, nfes in (("fm", (1, 2, 4, 100)), ("meanflow", (1, 2, 4))):
    print(f"  {name:9s}" + "".join(f"  NFE {k}: {w2[name, k]:6.3f}" for k in nfes))

# %% [markdown]
# ## Consistency: training and distillation
#
# The same map, trained by self-consistency ({py:class}`minigen.onestep.flow_map.Consistency`):
# the map from $x_t$ is regressed onto the stop-gradient map from the point one step `ct_dt`
# nearer the data, $X_{t\to r}(x_t)\approx\mathrm{sg}\,X_{s\to r}(x_s)$ with $s=t+dt$. In
# average-velocity form the target is $w\,\hat v+(1-w)\,\mathrm{sg}\,u(x_s,s,r)$ with
# $w=\min(1,dt/(r-t))$. *Consistency training* has no teacher: $\hat v=x_1-x_0$ and $x_s$ lies
# on the same conditional path. *Consistency distillation* takes $\hat v=v_T(x_t,t)$, one
# Euler step of the teacher's ODE (the flow-matching model above), and starts from the
# teacher's weights.

# %%
show_source(Consistency.target)


# %%
def student_of(teacher):
    net = net_2d()
    net.load_state_dict(teacher.state_dict())
    return net


t0 = time.perf_counter()
runs["ct"] = fit(net_2d(), Consistency(dt=ct_dt).loss, batch_2d_fn, steps_2d)
runs["cd"] = fit(student_of(teacher_2d), Consistency(dt=ct_dt, teacher=teacher_2d).loss, batch_2d_fn,
                 distill_steps)
runs["meanflow_distill"] = fit(student_of(teacher_2d), MeanFlow(share_r_neq_t=share_r_neq_t, adaptive_p=adaptive_p, time_loc=time_loc,
                                                                 teacher=teacher_2d).loss, batch_2d_fn, distill_steps)
for name in ("ct", "cd", "meanflow_distill"):
    measure(name, lambda k, n=name: sample_flow_map(runs[n].ema, x0_eval, k).x, (1, 2, 4))
    print(f"  {name:17s}" + "".join(f"  NFE {k}: {w2[name, k]:6.3f}" for k in (1, 2, 4)))
wall["2d_consistency"] = time.perf_counter() - t0

# %% [markdown]
# ## Flow map distillation without data
#
# A teacher's flow map satisfies $\partial_r X_{t\to r}(x)=v_T(X_{t\to r}(x),r)$, i.e.
# $u=v_T(X_{t\to r}(x),r)-(r-t)\,\partial_r u$ — a target that needs a starting point $x$ and
# nothing else ({py:class}`minigen.onestep.data_free.FlowMapDistillation`). *Data-based*, $x$
# is a data path point $t\,x_1+(1-t)\,x_0$. *Without data*, $x=\mathrm{sg}\,X_{0\to t}(z)$ is
# the student's own generated point from a prior sample $z$ ($x=z$ at $t=0$ for half the
# batch): the starting points are what the student visits when it samples, and the teacher
# is queried at the student's current output, so an error made early is met by the teacher's
# velocity where the student actually is (our reading of the paper's correction for
# compounding error). Same teacher, same initialisation, same steps and batch for both.

# %%
show_source(lagrangian_target)

# %%
t0 = time.perf_counter()
fmd = FlowMapDistillation(teacher_2d)
runs["distill_data"] = fit(student_of(teacher_2d), fmd.data_loss, batch_2d_fn, distill_steps)
runs["distill_data_free"] = fit(student_of(teacher_2d), fmd.data_free_loss,
                                lambda gen: (toy2d.sample_2d("8gaussians", batch_2d, gen),), distill_steps)
for name in ("distill_data", "distill_data_free"):
    measure(name, lambda k, n=name: sample_flow_map(runs[n].ema, x0_eval, k).x, (1, 2, 4))
    print(f"  {name:17s}" + "".join(f"  NFE {k}: {w2[name, k]:6.3f}" for k in (1, 2, 4)))
wall["2d_data_free"] = time.perf_counter() - t0

# %%
METHODS_2D = ["meanflow", "ct", "cd", "meanflow_distill", "distill_data", "distill_data_free"]
fig, axes = plt.subplots(1, len(METHODS_2D) + 2, figsize=(2.4 * (len(METHODS_2D) + 2), 2.6))
scatter(axes[0], sample(teacher_2d, x0_eval, "euler", 1).x, title=f"FM, 1 Euler: {w2['fm', 1]:.2f}", s=1)
scatter(axes[1], sample(teacher_2d, x0_eval, "euler", 100).x, title=f"FM, 100 Euler: {w2['fm', 100]:.2f}", s=1)
for ax, name in zip(axes[2:], METHODS_2D):
    scatter(ax, sample_flow_map(runs[name].ema, x0_eval, 1).x, title=f"{name}, 1 step: {w2[name, 1]:.2f}", s=1)
for ax in axes:
    ax.title.set_fontsize("small")
fig.tight_layout()

# %%
# NBVAL_IGNORE_OUTPUT
for name, res in runs.items():
    print(f"{name:18s} {res.ms_per_step:6.2f} ms/step, {res.wall_s:6.1f} s; one-step sampling of {n_eval} points "
          f"{sample_ms[name, 1]:.2f} ms")

# %% [markdown]
# ## Images: one-step students of a flow-matching U-Net
#
# The teacher is I-CFM with chapter 08's pixel U-Net (`UNet(1, base=16, mults=(1, 2))`,
# logit-normal $t$) on MNIST-5k 14×14; its FD at `teacher_nfe` Euler steps is the reference.
# The student starts from its weights in a {py:class}`~minigen.nets.two_time.TwoTimeUNet`
# (the gap embedding starts at zero, so the student starts as the teacher) and is trained by
# consistency distillation with uniform $t$ (the one-step pair $(0,1)$ needs $t$ near 0). FD is
# read by the MNIST classifier's features, `n_fd` samples, with the real-vs-real floor beside it.
# MeanFlow with the teacher's velocity was tried as a second student in scratch runs and left
# out: at 600 steps it costs 1.7x CD's time per step (the JVP through the U-Net) and scored FD
# 544 / 73 / 29 at NFE 1 / 2 / 4 against CD's 126 / 17 / 18 (teacher at 100 Euler steps: 15.8).

# %%
t0 = time.perf_counter()
x_tr, _ = fd.real_mnist_images("train", image_size)
clf = fd.load_classifier(verbose=False)
perm = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))
real_feats = fd.features(x_tr[perm[:n_fd]], clf)
floor = fd.real_vs_real_floor(n_fd, size=image_size, classifier=clf)
image_batches = lambda gen: (torch.randn(64, 1, image_size, image_size, generator=gen),
                             x_tr[torch.randint(0, len(x_tr), (64,), generator=gen)])
torch.manual_seed(seed)
cfm_img = CFM(LinearPath(), time_sampler="logit_normal")
res_teacher = fit(UNet(1, base=16, mults=(1, 2)), cfm_img.loss, image_batches, teacher_steps)
teacher_img = res_teacher.ema
x0_img = torch.randn(n_fd, 1, image_size, image_size, generator=torch.Generator().manual_seed(seed + 200))


def fd_of(x):
    return fd.frechet_distance(real_feats, fd.features(x.clamp(-1, 1), clf))


with torch.no_grad():
    fd_teacher = fd_of(sample(teacher_img, x0_img, "euler", teacher_nfe).x)
    fd_teacher_1 = fd_of(sample(teacher_img, x0_img, "euler", 1).x)
print(f"real-vs-real floor {floor['fd']:.3f} (n = {n_fd}); teacher: {teacher_nfe} Euler steps FD {fd_teacher:.3f}, "
      f"one Euler step {fd_teacher_1:.3f}")

# %%
students = {"cd": Consistency(dt=student_dt, teacher=teacher_img, time_sampler="uniform")}
fd_img, img_runs = {}, {}
for name, objective in students.items():
    img_runs[name] = fit(TwoTimeUNet.from_velocity_unet(teacher_img), objective.loss, image_batches, student_steps,
                         lr=student_lr)
    for k in (1, 2, 4):
        fd_img[name, k] = fd_of(sample_flow_map(img_runs[name].ema, x0_img, k).x)
    print(f"{name:17s}" + "".join(f"  NFE {k}: FD {fd_img[name, k]:7.3f} ({fd_img[name, k] / fd_teacher:.2f}x teacher)"
                                  for k in (1, 2, 4)))
best_img = {k: min(students, key=lambda n, k=k: fd_img[n, k]) for k in (1, 2, 4)}
wall["images"] = time.perf_counter() - t0

# %%
fig, axes = plt.subplots(1 + len(students), 10, figsize=(10, 1.1 * (1 + len(students))))
rows = [("teacher", sample(teacher_img, x0_img[:10], "euler", teacher_nfe).x)] + \
       [(f"{n}, 1 step", sample_flow_map(img_runs[n].ema, x0_img[:10], 1).x) for n in students]
for i, (label, x) in enumerate(rows):
    for j in range(10):
        axes[i, j].imshow(x[j, 0].clamp(-1, 1), cmap="gray_r", vmin=-1, vmax=1)
        axes[i, j].set_xticks([])
        axes[i, j].set_yticks([])
    axes[i, 0].set_ylabel(label, fontsize="x-small")
plt.tight_layout()
plt.show()

# %%
# NBVAL_IGNORE_OUTPUT
print(f"teacher {res_teacher.ms_per_step:.1f} ms/step; students: "
      + ", ".join(f"{n} {r.ms_per_step:.1f} ms/step" for n, r in img_runs.items()))

# %% [markdown]
# ## DM1: a MeanFlow policy with dispersive regularisation
#
# A policy maps an observation to an action; demonstrations are multi-modal. The toy task
# ({py:class}`minigen.onestep.actions.ModalActions`): an observation $o\in[-1,1]^2$ has four
# valid actions $o+\rho(\cos\theta_j,\sin\theta_j)$, $\theta_j=2\pi j/4+3\,o_1$, which rotate
# with the observation; an action succeeds within 0.2 of a valid mode, and coverage is the
# share of the four modes an observation's 16 samples hit. The policy is a one-step MeanFlow
# model from $\mathcal N(0,I)$ to actions, conditioned on $o$. DM1 adds the dispersive loss
# (Wang & He, 2025) on its middle hidden layer,
# $\mathcal L_\text{disp}=\log\frac1{B^2}\sum_{i,j}e^{-\|h_i-h_j\|^2/(d\,\tau)}$,
# which pushes the batch's features apart ({py:func}`minigen.onestep.dispersive.dispersive_loss`).

# %%
show_source(dispersive_loss)

# %%
t0 = time.perf_counter()
task = ModalActions()
act_batches = lambda gen: (lambda o: (torch.randn(batch_2d, 2, generator=gen), task.demonstrations(o, gen), o))(
    task.observations(batch_2d, gen))
policy_mf = MeanFlow(share_r_neq_t=share_r_neq_t, adaptive_p=adaptive_p, time_loc=time_loc)
policies = {"plain": fit(net_2d(2), policy_mf.loss, act_batches, action_steps).ema,
            "dispersive": fit(net_2d(2), with_dispersion(policy_mf.loss, dispersive_weight, layer=1), act_batches,
                              action_steps).ema}
ag = torch.Generator().manual_seed(seed + 300)
obs_test = task.observations(1000, ag)
obs_cov = task.observations(200, ag)
a0, a0_cov = torch.randn(1000, 2, generator=ag), torch.randn(200 * 16, 2, generator=ag)
success, coverage, disp_feat = {}, {}, {}
for name, pol in policies.items():
    success[name] = task.success_rate(obs_test, sample_flow_map(pol, a0, 1, cond=obs_test).x)
    acts = sample_flow_map(pol, a0_cov, 1, cond=obs_cov.repeat_interleave(16, 0)).x
    coverage[name] = task.mode_coverage(obs_cov, acts.reshape(200, 16, 2))
    with torch.no_grad():
        disp_feat[name] = float(dispersive_loss(pol.features(a0, torch.zeros(1000), cond=obs_test)[1]))
    print(f"{name:10s}: one-step success {success[name]:.3f}, mode coverage {coverage[name]:.3f}, "
          f"dispersive loss of its features {disp_feat[name]:.3f}")
wall["dm1"] = time.perf_counter() - t0

# %% [markdown]
# ## TwinFlow at toy scale: one network, a real and a twin branch
#
# TwinFlow trains a one-step generator with no teacher and no discriminator network: the same
# network also learns, on a second branch (the paper's negative times; here a branch input
# $b=\pm1$), the velocity of its *own* generated distribution, and the generator is moved by
# the difference of the two branches' denoised guesses — a distribution-matching step whose
# two fields come from one network ({py:class}`minigen.onestep.twinflow.TwinFlow`). We train it
# with the self-adversarial weight `0.5` and, as the control, `0` (MeanFlow on the real
# branch plus an idle twin branch), `twin_steps` steps each, on 8gaussians → moons.

# %%
show_source(TwinFlow.loss)

# %%
t0 = time.perf_counter()
for w_adv in (0.0, 0.5):
    torch.manual_seed(seed)
    twin = TwinFlow(adv_weight=w_adv, real=MeanFlow(share_r_neq_t=share_r_neq_t, adaptive_p=adaptive_p,
                                                     time_loc=time_loc))
    res_twin = fit(TwoTimeMLP(2, width=width_2d, depth=3, cond_dim=1), twin.loss, batch_2d_fn, twin_steps)
    name = f"twinflow_adv{key_number(w_adv)}"
    measure(name, lambda k, m=res_twin.ema: sample_flow_map(m, x0_eval, k, cond=branch(n_eval, 1, x0_eval)).x,
            (1, 2, 4))
    print(f"  {name:17s}" + "".join(f"  NFE {k}: {w2[name, k]:6.3f}" for k in (1, 2, 4)))
wall["twinflow"] = time.perf_counter() - t0

# %% [markdown]
# ## Results

# %%
DISTILLED = ("cd", "meanflow_distill", "distill_data", "distill_data_free")  # their training time adds the teacher's
best_1 = min(METHODS_2D, key=lambda n: w2[n, 1])
best_4 = min(METHODS_2D + ["fm"], key=lambda n: w2[n, 4])
print(f"best one-step method on 2D: {best_1} (W2² {w2[best_1, 1]:.3f}); best at NFE 4: {best_4} "
      f"(W2² {w2[best_4, 4]:.3f})")
print(f"MeanFlow one step / flow matching 100 Euler steps: {w2['meanflow', 1] / w2['fm', 100]:.2f}")
print("best image student: " + ", ".join(f"NFE {k}: {best_img[k]} ({fd_img[best_img[k], k] / fd_teacher:.2f}x teacher)"
                                         for k in (1, 2, 4)))
for (name, k), v in w2.items():
    metrics[f"w2sq_{name}_nfe{k}"] = metric(v, "", "lower")
    metrics[f"sample_ms_{name}_nfe{k}"] = metric(sample_ms[name, k], "ms", "lower")
for name, res in runs.items():
    metrics[f"ms_per_step_{name}"] = metric(res.ms_per_step, "ms", "lower")
for (name, k), v in fd_img.items():
    metrics[f"fd_{name}_nfe{k}"] = metric(v, "", "lower")
    metrics[f"ratio_fd_{name}_nfe{k}_over_teacher"] = metric(v / fd_teacher, "x", "lower")
for k in (1, 2, 4):
    metrics[f"ratio_fd_best_nfe{k}_over_teacher"] = metric(fd_img[best_img[k], k] / fd_teacher, "x", "lower")
for name in policies:
    metrics[f"success_policy_{name}"] = metric(success[name], "", "higher")
    metrics[f"coverage_policy_{name}"] = metric(coverage[name], "", "higher")
    metrics[f"dispersive_features_policy_{name}"] = metric(disp_feat[name], "", "lower")
metrics.update({
    "identity_err_true_tangent": metric(identity_err["(v, 0, 1)"], "", "lower"),
    "identity_err_wrong_tangent_min": metric(min(identity_err["(v, 0, 0)"], identity_err["(v, 1, 0)"]), "", "higher"),
    "w2sq_floor": metric(w2_floor, "", "lower"),
    "ratio_w2sq_meanflow_nfe1_over_fm_nfe100": metric(w2["meanflow", 1] / w2["fm", 100], "x", "lower"),
    "ratio_w2sq_fm_nfe1_over_meanflow_nfe1": metric(w2["fm", 1] / w2["meanflow", 1], "x", "higher"),
    "w2sq_best_nfe1": metric(w2[best_1, 1], "", "lower"),
    "shared_w2sq_8gaussians-moons_nfe1": metric(w2[best_1, 1], "", "lower"),
    "shared_w2sq_8gaussians-moons_nfe4": metric(w2[best_4, 4], "", "lower"),
    "best_nfe1_is_meanflow": metric(float(best_1 == "meanflow"), "", "higher"),
    "shared_train_s": metric(runs[best_1].wall_s + (runs["fm"].wall_s if best_1 in DISTILLED else 0.0), "s", "lower"),
    "shared_nfe": metric(1.0, "", "lower"),
    "shared_sample_ms": metric(sample_ms[best_1, 1] / n_eval, "ms", "lower"),
    "fd_floor": metric(floor["fd"], "", "lower"),
    "fd_teacher": metric(fd_teacher, "", "lower"),
    f"fd_teacher_euler{teacher_nfe}": metric(fd_teacher, "", "lower"),
    "fd_teacher_euler1": metric(fd_teacher_1, "", "lower"),
    "shared_fd_ratio_mnist14": metric(fd_img[best_img[1], 1] / floor["fd"], "x", "lower"),
    "teacher_nfe": metric(float(teacher_nfe), "", "higher"),
    "student_steps": metric(float(student_steps), "", "higher"),
})
metrics.update({f"wall_s_{k}": metric(v, "s", "lower") for k, v in wall.items()})
results_path = record("10_one_step", metrics, mode=mode, seed=seed, wall_s=time.perf_counter() - t_start)

# %%
# NBVAL_IGNORE_OUTPUT
ResultsTable(metrics)

# %% [markdown]
# Full run (2 CPU cores, one thread): W2² at NFE 1 / 2 / 4 — flow matching 4.13 / 3.13 / 1.12
# (0.072 at 100 Euler steps), MeanFlow 0.293 / 0.413 / 0.244, consistency training 0.49 / 0.29 /
# 0.20, consistency distillation 0.31 / 0.16 / 0.151, MeanFlow distillation 0.44 / 0.54 / 0.27,
# flow map distillation with data 0.149 / 0.116 / 0.218 and without data 0.179 / 0.140 / 0.324,
# TwinFlow 0.74 (adversarial weight 0.5) against 0.73 without the term. MeanFlow misses the
# issue's 0.15 (and 2x flow matching's 100 steps: 4.0x); the data-based distilled map reaches
# 0.149. Images: teacher FD 17.1 at 100 Euler steps (floor 4.99), the consistency-distilled
# student 54.1 / 26.9 / 24.3 at NFE 1 / 2 / 4 (3.17x / 1.58x / 1.42x the teacher: the 1.5x
# target is met at NFE 4 only). DM1: success 0.203 and coverage 0.564 without the dispersive
# term, 0.202 and 0.566 with it — the regulariser spreads the features (−0.96 → −6.66) but
# does not change the policy on this task.
#
# ## What the settings were chosen from
#
# Scratch runs on 8gaussians → moons (two-time MLP 3 × 128, batch 256, the same evaluation
# points), MeanFlow's one-step / two-step / four-step W2² after 4000 steps:
#
# | setting (share $r\ne t$, $p$, logit-normal loc, scale) | NFE 1 | NFE 2 | NFE 4 |
# |---|---|---|---|
# | 0.5, 0.5, +0.4, 1 | 0.36 | 0.44 | 0.35 |
# | 0.5, 0.5, +0.8, 1 (this chapter) | 0.28 | 0.51 | 0.38 |
# | 0.5, 0.5, +1.2, 1 | 0.37 | 0.68 | 0.52 |
# | 0.5, 0.5, 0, 1 | 0.51 | 0.41 | 0.48 |
# | 0.5, 0.5, −0.4, 1 | 0.68 | 0.86 | 0.94 |
# | 0.5, 0.5, 0, 1.6 | 0.62 | 0.39 | 0.32 |
# | 0.5, 0.5, uniform $t$ | 0.62 | 0.36 | 0.31 |
# | 0.75, 0.5, +0.8, 1 | 0.31 | 0.43 | 0.33 |
# | 0.5, 0, +0.8, 1 | 0.43 | 0.73 | 0.33 |
# | 0.5, 0.5, +0.4, 1, width 256 | 0.48 | 0.68 | 0.36 |
#
# At 8000 steps: $p=1$ (the paper's) 0.70, $p=0.5$ 0.36, $p=0$ 0.48 (share 0.5, loc +0.4);
# uniform $t$ with $p=1$ 1.57. Longer training does not move the one-step figure much below 0.3:
# the one-step map of a flow between 8 Gaussians and two moons is steep where a Gaussian is
# split between the moons, and one smooth MLP jump blurs it, where 100 Euler steps of the
# flow-matching field compose 100 gentle maps.
#
# ## Summary
#
# * A two-time network $u(x,t,r)$ with $X_{t\to r}(x)=x+(r-t)\,u$ is a flow map with the
#   boundary condition built in; every method of this chapter trains the same network and
#   samples it with {py:func}`minigen.onestep.flow_map.sample_flow_map` in 1, 2 or 4 jumps.
# * MeanFlow's identity $u=v-(t-r)\,du/dt$ holds to float64 rounding for the closed-form
#   Gaussian flow map and fails by O(1) with the wrong JVP tangents; trained from scratch with
#   independent pairs it replaces one blurred Euler step of flow matching by one jump near the
#   data (the printed table: W2² at NFE 1 against flow matching's at NFE 1 and 100).
# * Consistency training, consistency distillation and flow map distillation with and without
#   data reach the figures printed above at the same batch and steps; the data-free student
#   never sees a data point, only prior samples and the teacher.
# * On MNIST 14×14 the one-step students start from the teacher's weights; the printed FD
#   ratios say how far one, two and four jumps are from the teacher's 100 Euler steps.
# * DM1's dispersive term spreads the policy's features; the printed success and coverage say
#   what it did on the toy action task.
#
# ## Exercises
#
# 1. Sweep MeanFlow's share of $r\ne t$ pairs (0.25, 0.5, 0.75, 1) and the weighting power $p$
#    (0, 0.5, 1). Which setting wins at one step, and which at two?
# 2. Replace the JVP by a finite difference of $u$ along $(x+hv,t+h)$. How small must $h$ be in
#    float32 before the one-step W2² degrades?
# 3. Consistency training with a schedule: start with `dt` = 0.1 and shrink it to 0.005 during
#    training (Song et al., 2023). Does the one-step figure improve at the same budget?
# 4. TwinFlow: train the same two-time network so that its one-step samples, pushed back along
#    its own flow, match the noise (a self-adversarial pair of the forward and the reverse
#    generator, no discriminator network). Compare with MeanFlow at equal steps.
