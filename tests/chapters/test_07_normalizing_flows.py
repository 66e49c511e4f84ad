"""Chapter 07's quick-mode figures (``notebooks/07_normalizing_flows.py``), asserted as properties."""

from __future__ import annotations

import math

from chapters.helpers import quick_results, value


def test_07_normalizing_flows():
    r = quick_results("07_normalizing_flows")
    # the change of variables is exact: log-det against autograd's Jacobian, inverse (measured 0, 0)
    assert value(r, "logdet_abs_err_vs_autograd") < 1e-8
    assert value(r, "inverse_max_err") < 1e-10
    # no model's cross-entropy beats the entropy (Gibbs): 150 quick steps give 4.28 > log 32
    nll, se = value(r, "nll_checkerboard_realnvp"), value(r, "nll_checkerboard_realnvp_se")
    assert math.log(32) - 3 * se < nll < 5.0
    # digits: after 40 steps the coupling flow is already far below the uniform model (128 vs 181)
    assert value(r, "nats_digits_coupling") < 0.9 * 64 * math.log(17)
    assert 0 < value(r, "nats_digits_independent_pixels") < 64 * math.log(17)
    # Jacobi: at most L = 16 sweeps per block with no tolerance and equal to the sequential
    # inverse; a looser tolerance stops earlier (measured 13.25 >= 3 >= 2.75 >= 2 sweeps) with an
    # error of the tolerance's order or below (measured 1e-4 at tol 1e-2)
    assert value(r, "jacobi_sweeps_tol0") <= value(r, "sequential_passes_per_block") == 16
    assert value(r, "jacobi_rel_err_tol0") < 1e-4
    sweeps = [value(r, f"jacobi_sweeps_{t}") for t in ("tol1em2", "tol1em3", "tol1em4", "tol0")]
    assert sweeps == sorted(sweeps)
    assert value(r, "jacobi_rel_err_tol1em2") < 0.1 and value(r, "jacobi_rel_err_tol1em3") < 0.01
    # the independent classifier of the guidance section reads real digits (measured 0.964)
    assert value(r, "acc_logistic_regression") > 0.9
    # the 40-step conditional flow is untrained: the FD tells its samples from digits (measured 15x)
    assert value(r, "fd_digits_raw") > 5 * value(r, "fd_digits_floor")
