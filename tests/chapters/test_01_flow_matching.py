"""Chapter 01's quick-mode figures (``notebooks/01_flow_matching.py``), asserted as properties."""

from __future__ import annotations

from chapters.helpers import quick_results, value


def test_01_flow_matching():
    r = quick_results("01_flow_matching")
    m = "8gaussians-moons"
    # OT pairs make one Euler step work: measured 4.5 vs 0.56 (ratio 8) at 1500 quick steps
    assert value(r, f"ratio_w2sq_euler1_icfm_over_otcfm_{m}") >= 5
    assert value(r, f"npe_otcfm_{m}") < value(r, f"npe_icfm_{m}")
    # W-CFM and SB-CFM sit between I-CFM and OT-CFM at one step
    assert value(r, f"w2sq_euler1_wcfm_{m}") < value(r, f"w2sq_euler1_icfm_{m}") / 2
    assert value(r, f"w2sq_euler1_sbcfm_{m}") < value(r, f"w2sq_euler1_icfm_{m}") / 2
    # the adaptive solver follows the curved I-CFM flow: far below its one-step error
    assert value(r, f"w2sq_adaptive_icfm_{m}") < value(r, f"w2sq_euler1_icfm_{m}") / 3
    assert value(r, f"w2sq_adaptive_icfm_{m}") < 1.5
    # more Euler steps help I-CFM monotonically
    e = [value(r, f"w2sq_euler{k}_icfm_{m}") for k in (1, 2, 4, 8)]
    assert e == sorted(e, reverse=True)
    # likelihood: no model beats the data entropy log 32 = 3.466 nats; Hutchinson ≈ exact
    true = value(r, "nll_checkerboard_true_entropy")
    nll = value(r, "nll_checkerboard_icfm")
    assert true - 0.05 < nll < true + 1.5
    assert abs(value(r, "nll_checkerboard_icfm_hutchinson") - nll) < 0.15
