"""Chapter 15's quick-mode figures (``notebooks/15_gflownets.py``), asserted as properties."""

from __future__ import annotations

import math

from chapters.helpers import quick_results, value

LOSSES = ("fm", "db", "tb", "subtb", "fldb", "fldb_incomplete")


def test_15_gflownets():
    r = quick_results("15_gflownets")
    # enumeration: log Z of the 2D grid by hand (64 x 0.1 + 16 x 0.5 + 4 x 2), and the DP's
    # F(s_0) equal to it; every loss vanishes on the exact flows and not off them
    assert abs(value(r, "logz_exact_2d") - math.log(22.4)) < 1e-9
    assert value(r, "logz_flow_dp_err_2d") < 1e-9 and value(r, "logz_flow_dp_err_4d") < 1e-9
    assert value(r, "balance_loss_exact_max") < 1e-8
    assert value(r, "balance_loss_perturbed_min") > 1e-3
    assert value(r, "l1_exact_flow_policy_2d") < 1e-6
    # the sampling floor is positive, grows as the sample shrinks (16x fewer: about 4x), and is
    # larger on the bigger grid at the same N
    assert 0 < value(r, "l1_floor_2d") < value(r, "l1_floor_2d_n_over_16")
    assert 2.5 < value(r, "l1_floor_2d_n_over_16") / value(r, "l1_floor_2d") < 6
    assert value(r, "l1_floor_4d") > value(r, "l1_floor_2d")
    # a few dozen steps already move every loss's policy towards R/Z from the untrained one
    for kind in LOSSES:
        assert 0 <= value(r, f"l1_exact_{kind}_2d") <= 2
        assert value(r, f"ratio_l1_samples_over_floor_{kind}_2d") > 0
        assert value(r, f"modes_found_{kind}_2d") <= 4
    for kind in ("tb", "db", "subtb"):
        assert value(r, f"l1_exact_{kind}_2d") < value(r, "l1_init_2d")
        assert 0 <= value(r, f"l1_exact_{kind}_4d") <= 2
        assert value(r, f"modes_found_{kind}_4d") <= value(r, "modes_total_4d") == 16
    # the sweep over heights and reward floors: every cell recorded, as an L1 and a mode count
    for h in (8, 16):
        for k in ("0p1", "0p01", "0p001"):
            assert 0 <= value(r, f"sweep_l1_exact_tb_h{h}_r0_{k}") <= 2
            assert value(r, f"sweep_abs_logz_err_tb_h{h}_r0_{k}") >= 0
            assert 1 <= value(r, f"sweep_modes_found_tb_h{h}_r0_{k}") <= 4
    # the failing cell again with epsilon-uniform exploration: recorded, as an L1 and a mode count
    assert 0 <= value(r, "explore_l1_exact_tb_h16_r0_0p001") <= 2
    assert value(r, "explore_abs_logz_err_tb_h16_r0_0p001") >= 0
    assert 1 <= value(r, "explore_modes_found_tb_h16_r0_0p001") <= 4
    # OC-GFN and OP-GFN are recorded; the OP sampler moves mass onto the top states
    for k in ("0p1", "0p01", "0p001"):
        assert 0 <= value(r, f"oc_l1_zero_shot_r0_{k}") <= 2
        assert value(r, f"tb_scratch_steps_to_match_oc_r0_{k}") >= 1
    assert 0 <= value(r, "oc_success_rate_final") <= 1
    assert abs(value(r, "top_share_target_2d") - 4 * 2.6 / 22.4) < 1e-9
    assert value(r, "top_share_op_2d") > value(r, "top_share_op_init_2d")
