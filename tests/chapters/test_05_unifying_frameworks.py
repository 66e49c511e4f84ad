"""Chapter 05's quick-mode figures (``notebooks/05_unifying_frameworks.py``), asserted as properties."""

from __future__ import annotations

from chapters.helpers import quick_results, value


def test_05_unifying_frameworks():
    r = quick_results("05_unifying_frameworks")
    m = "8gaussians-moons"
    # exact fields: every eps lands on the target's mean and covariance (quick run: <= 0.98 s.e.)
    for e in ("0", "0p5", "2"):
        assert value(r, f"exact_fields_mean_err_se_eps{e}") < 5
        assert value(r, f"exact_fields_cov_err_se_eps{e}") < 5
    # learned fields, 600 quick steps: eps = 0.5 matches the ODE (measured 0.561 vs 0.563);
    # eps = 2 amplifies the rough denoiser (measured 0.85), so it is only bounded here
    gap = abs(value(r, f"w2sq_eps0p5_mean_{m}") - value(r, f"w2sq_eps0_mean_{m}"))
    assert gap < 0.1
    assert value(r, f"w2sq_eps0_mean_{m}") < 1.0
    # the same drift error hurts the eps = 2 SDE less than the ODE (W2² +0.97 against +2.19)
    assert value(r, "robust_increase_w2sq_eps2") < value(r, "robust_increase_w2sq_eps0")
    # generator matching in 1D: flow, jump, posterior-averaged jump and the w = 0.5
    # superposition share the marginals (moments within 5 standard errors, measured <= 1.45;
    # W1 near the floor, measured <= 0.066 against a floor of 0.038 on the mixture)
    for proc in ("flow", "jump", "superposition_w0p5"):
        for path in ("cond", "mix"):
            assert value(r, f"gm_mean_err_se_{path}_{proc}") < 5
            assert value(r, f"gm_var_err_se_{path}_{proc}") < 5
            assert value(r, f"gm_w1_{path}_{proc}") < 3 * value(r, f"gm_w1_floor_{path}") + 0.01
    assert value(r, "gm_mean_err_se_mix_jump_posterior") < 5
