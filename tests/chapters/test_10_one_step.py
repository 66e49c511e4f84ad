"""Chapter 10's quick-mode figures (``notebooks/10_one_step.py``), asserted as properties."""

from __future__ import annotations

from chapters.helpers import quick_results, value


def test_10_one_step():
    r = quick_results("10_one_step")
    # the MeanFlow identity in closed form: exact with the tangent (v, 0, 1), O(1) off without
    # the time derivative or with r in place of t (float64; an identity, not a trained figure)
    assert value(r, "identity_err_true_tangent") < 1e-10
    assert value(r, "identity_err_wrong_tangent_min") > 0.1
    # independent pairs: one Euler step of flow matching lands at the conditional mean, far from
    # the moons, while MeanFlow's one jump at the same budget is already much nearer (measured
    # 6.0 vs 1.0 after 300 quick steps)
    assert value(r, "ratio_w2sq_fm_nfe1_over_meanflow_nfe1") > 2
    # more Euler steps help flow matching
    fm = [value(r, f"w2sq_fm_nfe{k}") for k in (1, 2, 4, 100)]
    assert fm == sorted(fm, reverse=True)
    # every one-step method of the chapter is recorded at NFE 1, 2 and 4, with its sampling time
    for name in ("meanflow", "ct", "cd", "meanflow_distill", "distill_data", "distill_data_free"):
        for k in (1, 2, 4):
            assert value(r, f"w2sq_{name}_nfe{k}") > 0
            assert value(r, f"sample_ms_{name}_nfe{k}") > 0
    assert value(r, "shared_w2sq_8gaussians-moons_nfe1") <= value(r, "w2sq_meanflow_nfe1")
    assert value(r, "shared_nfe") == 1
    # images: the FD floor and the teacher are recorded; the student, which starts as the
    # teacher, is scored at NFE 1, 2 and 4
    assert value(r, "fd_floor") > 0
    assert value(r, "fd_teacher") > value(r, "fd_floor")
    for k in (1, 2, 4):
        assert value(r, f"fd_cd_nfe{k}") > 0
    # TwinFlow, with and without its self-adversarial term, at NFE 1, 2 and 4
    for name in ("twinflow_adv0", "twinflow_adv0p5"):
        for k in (1, 2, 4):
            assert value(r, f"w2sq_{name}_nfe{k}") > 0
    # DM1: the dispersive term spreads the policy's features (its loss on them is lower)
    assert value(r, "dispersive_features_policy_dispersive") < value(r, "dispersive_features_policy_plain")
    for name in ("plain", "dispersive"):
        assert 0 <= value(r, f"success_policy_{name}") <= 1
        assert 0 <= value(r, f"coverage_policy_{name}") <= 1
