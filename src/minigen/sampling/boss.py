"""Bellman Optimal Step-size Straightening, its step-size half (Nguyen et al., 2023, "Bellman
Optimal Stepsize Straightening of Flow-Matching Models", §3.1): choose K Euler steps for a
trained velocity field by dynamic programming over a fine grid.

Reference trajectories x_0 .. x_N of the field on a fine grid t_0 < .. < t_N (a few hundred
samples, an accurate solver) give, for every pair j < k, the error of one Euler jump

    c(j, k) = E || x_k - x_j - (t_k - t_j) v(x_j, t_j) ||^2,

from the velocities at the grid points (N + 1 NFE per trajectory, once). The cost of a schedule
0 = k_0 < k_1 < .. < k_K = N is the sum of its jumps' costs; Bellman's recursion

    D_m(k) = min_{j < k} D_{m-1}(j) + c(j, k),      D_0(0) = 0,

finds the cheapest schedule with exactly K jumps in O(K N^2). (The paper then fine-tunes the
network on the chosen steps — the "straightening"; that part is an exercise here.)
"""

from __future__ import annotations

import itertools

import torch

from minigen.recipe.grid_solvers import check_grid, integrate_on_grid
from minigen.recipe.ode_solvers import Velocity, field_at

Tensor = torch.Tensor


@torch.no_grad()
def reference_trajectories(v: Velocity, x0: Tensor, times: Tensor, method: str = "rk4",
                           substeps: int = 4, **cond) -> tuple[Tensor, Tensor]:
    """States on the fine grid ``times`` ((N+1,)) from ``substeps`` steps of ``method`` per
    interval, and the velocities at them: both (N+1, B, ...)."""
    times = check_grid(times)
    states, x = [x0], x0
    for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
        x = integrate_on_grid(v, x, torch.linspace(t, t_next, substeps + 1, dtype=torch.float64),
                              method, **cond).x
        states.append(x)
    traj = torch.stack(states)
    vel = torch.stack([field_at(v, xk, float(t), **cond) for xk, t in zip(traj, times)])
    return traj, vel


def euler_jump_costs(traj: Tensor, vel: Tensor, times: Tensor) -> Tensor:
    """c(j, k) = mean over samples of ||x_k - x_j - (t_k - t_j) v_j||^2 for j < k, +inf
    elsewhere: (N+1, N+1) float64. traj, vel: (N+1, B, ...)."""
    times = check_grid(times)
    n = len(times)
    if traj.shape != vel.shape or traj.shape[0] != n:
        raise ValueError(f"traj and vel must both be (N+1, B, ...) with N+1 = {n}, got "
                         f"{tuple(traj.shape)} and {tuple(vel.shape)}")
    flat_x, flat_v = traj.flatten(2).double(), vel.flatten(2).double()
    cost = torch.full((n, n), float("inf"), dtype=torch.float64)
    for j in range(n - 1):
        dt = (times[j + 1:] - times[j]).view(-1, 1, 1)
        err = flat_x[j + 1:] - flat_x[j] - dt * flat_v[j]
        cost[j, j + 1:] = err.pow(2).sum(-1).mean(-1)
    return cost


def bellman_steps(cost: Tensor, steps: int) -> tuple[list[int], float]:
    """The cheapest path 0 = k_0 < .. < k_K = N with K = ``steps`` jumps, and its cost, by the
    recursion D_m(k) = min_j D_{m-1}(j) + c(j, k) with back-pointers. cost: (N+1, N+1)."""
    n = cost.shape[0] - 1
    if cost.ndim != 2 or cost.shape[1] != n + 1:
        raise ValueError(f"cost must be square, got {tuple(cost.shape)}")
    if not isinstance(steps, int) or not 1 <= steps <= n:
        raise ValueError(f"steps must be an integer in 1..{n}, got {steps!r}")
    inf = float("inf")
    best = torch.full((n + 1,), inf, dtype=torch.float64)
    best[0] = 0.0
    back = []
    for _ in range(steps):
        total = best[:, None] + cost  # (j, k): reach j in m-1 jumps, then jump to k
        best, arg = total.min(0)
        back.append(arg)
    path = [n]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1], float(best[n])


def brute_force_steps(cost: Tensor, steps: int) -> tuple[list[int], float]:
    """The same optimum by enumerating every schedule (tests only: C(N-1, K-1) of them)."""
    n = cost.shape[0] - 1
    best = (None, float("inf"))
    for inner in itertools.combinations(range(1, n), steps - 1):
        path = [0, *inner, n]
        c = float(sum(cost[a, b] for a, b in zip(path[:-1], path[1:])))
        if c < best[1]:
            best = (path, c)
    return best


def boss_times(v: Velocity, x0: Tensor, steps: int, fine: int = 100, t0: float = 0.0,
               t1: float = 1.0, **cond) -> Tensor:
    """The BOSS grid of ``steps`` Euler steps for field v, from reference trajectories of x0
    ((B, ...), a few hundred samples) on a uniform fine grid of ``fine`` intervals: (steps+1,)."""
    fine_times = torch.linspace(t0, t1, fine + 1, dtype=torch.float64)
    traj, vel = reference_trajectories(v, x0, fine_times, **cond)
    path, _ = bellman_steps(euler_jump_costs(traj, vel, fine_times), steps)
    return fine_times[path]
