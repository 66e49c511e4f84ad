"""The five parts of the recipe (book/design.md): x_t = alpha(t) x1 + sigma(t) x0 (+ gamma(t) z),
t = 0 the source, t = 1 the data.

    couplings.py      part 1: how x0 and x1 are paired (independent, exact OT, Sinkhorn, Gibbs weights)
    prefetch.py       part 1: batches paired ahead of the step on a worker thread (OT off the critical path)
    paths.py          part 2: Gaussian paths, their schedules and exact prediction conversions;
                      the Interpolant, which adds gamma(t) z to any of them (BridgePath is one)
    gamma.py          part 2: gamma(t) schedules of the independent noise (Brownian, sin²)
    time_samplers.py  part 3: where in t a loss looks (uniform, logit-normal, mode, likelihood IS, EDM)
    objectives.py     part 3: conditional flow matching, the per-t diagnostic, the loss result type
    ode_solvers.py    part 4: fixed-step and adaptive ODE solvers with NFE counts
    time_grids.py     part 4: where a fixed-step solver's steps go (uniform in t, uniform in log-SNR)
    grid_solvers.py   part 4: the fixed-step solvers on any time grid
    dpm_solver.py     part 4: DDIM, DPM-Solver (orders 1-3) and DPM-Solver++(2M), exponential
                      integrators in log-SNR
    sde.py            part 4: the forward SDE derived from a path (drift, diffusion, prior)
    sde_solvers.py    part 4: Euler–Maruyama and predictor–corrector samplers
    likelihood.py     part 4: the exact (or Hutchinson) log-likelihood of a flow
    wrappers.py       part 5: a network seen as another field: conversions, CFG, re-timing
    results.py        the two result types every part shares: SampleResult and LossResult

Imports only ``minigen.broadcast`` outside itself: no family folder, no network.
"""
