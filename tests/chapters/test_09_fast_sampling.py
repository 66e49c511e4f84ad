"""Chapter 09's quick-mode figures (``notebooks/09_fast_sampling.py``), asserted as properties that
hold for barely trained networks: identities between solvers, the Bellman optimum, NFE counts,
architecture ratios."""

from __future__ import annotations

from chapters.helpers import quick_results, value


def test_09_fast_sampling():
    r = quick_results("09_fast_sampling")
    # DDIM is DPM-Solver-1 (data and noise forms of one update) on any model, and on the linear
    # path of flow matching it is Euler: the same samples, up to float rounding
    for key in ("fm", "vp"):
        for nfe in (4, 10):
            a, b = value(r, f"w2sq_{key}_ddim_nfe{nfe}"), value(r, f"w2sq_{key}_dpm1_nfe{nfe}")
            assert abs(a - b) <= 1e-3 * max(a, b)
    a, b = value(r, "w2sq_grid_fm_euler_logsnr_nfe10"), value(r, "w2sq_grid_fm_ddim_logsnr_nfe10")
    assert abs(a - b) <= 1e-3 * max(a, b)
    # the dynamic programme's schedule never costs more than the uniform one on the same table
    for key in ("2d", "img"):
        for k in (2, 4, 10):
            assert value(r, f"boss_cost_ratio_{key}_nfe{k}") <= 1 + 1e-9
    # NFE accounting: Heun 2 per step, the pseudo corrector K + 1, FlowTurbo 1 + 2 + 1 for its
    # Heun-free schedule (3 pseudo steps) and refiner calls for the rest
    assert value(r, "nfe_flowturbo_heun") == 8
    assert value(r, "nfe_flowturbo_pseudo") == 9
    assert value(r, "nfe_flowturbo_turbo") == 4
    assert 4 < value(r, "nfe_equiv_flowturbo_turbo") < 9
    # the small networks are small: the refiner and each blockwise segment under half the teacher
    assert value(r, "flops_ratio_refiner_over_teacher") < 0.5
    assert value(r, "flops_ratio_block_over_teacher") < 0.5
    assert value(r, "nfe_fm_dopri5") > 0 and value(r, "fd_floor") > 0
    assert value(r, "image_steps") == 30
