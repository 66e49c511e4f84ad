"""Chapter 03's quick-mode figures (``notebooks/03_score_sde.py``), asserted as properties."""

from __future__ import annotations

from chapters.helpers import quick_results, value


def test_03_score_sde():
    r = quick_results("03_score_sde")
    # the simulated noising SDE has the path's marginal: std of (x_t - alpha x1) / sigma is 1
    # (8000 values: standard error 0.008; measured within 0.006 of 1)
    for name in ("vp", "subvp", "ve"):
        for t in ("0p5", "0"):
            assert abs(value(r, f"forward_sde_std_t{t}_{name}") - 1) < 0.03
        # score, epsilon and velocity are one object: measured <= 1e-15 (float64)
        assert value(r, f"conversion_rel_err_{name}") < 1e-10
    prior, floor = value(r, "w2sq_prior_2d"), value(r, "w2sq_floor_2d")  # measured 3.70, 0.36
    for name in ("vp", "subvp", "ve"):
        # predictor-corrector lands near the data: measured 0.53, 0.51, 0.58 at 400 quick steps (width 64)
        assert floor <= value(r, f"w2sq_pc_{name}") < prior / 4
        # the ODE is the worst sampler of the 400-step quick models (measured 0.80, 1.36, 1.94)
        assert value(r, f"w2sq_ode_{name}") > value(r, f"w2sq_pc_{name}")
    # VE at 100 NFE: the corrector halves EM's W2² (measured 1.18 -> 0.58)
    assert value(r, "w2sq_pc_ve") < value(r, "w2sq_em_ve") / 1.5
    # no model beats the checkerboard's entropy log 32 = 3.466 nats (measured 4.37-4.77)
    true = value(r, "nll_2d_true_entropy")
    for cfg in ("vp", "subvp", "subvp_lik", "ve"):
        assert true - 0.05 < value(r, f"nll_2d_{cfg}") < true + 2.0
    # the per-pixel baselines are fixed computations on fixed data (the first 24 test images in
    # quick mode): measured 2.439 and 2.527
    assert abs(value(r, "bpd_digits_independent_pixels") - 2.439) < 0.01
    assert abs(value(r, "bpd_mnist_independent_pixels") - 2.527) < 0.01
    # the 5-step quick image models are untrained: only finite, positive bits/dim
    for name in ("bpd_digits_vp", "bpd_digits_subvp", "bpd_mnist", "bpd_mnist_decoded"):
        assert 0 < value(r, name) < 12
    # decoding from noise beats uniform dequantisation even for the untrained model (measured
    # 9.06 vs 10.70 bits/dim on 24 test images after 5 steps)
    assert value(r, "bpd_mnist_decoded") < value(r, "bpd_mnist")
    assert value(r, "mnist_classifier_test_accuracy") > 0.95
    # the FD tells the 5-step (untrained) models' samples from digits by an order of magnitude
    # over the real-vs-real floor (measured 24.8-27.4x); a broken feature map or FD would not
    for smp in ("em", "pc", "ode"):
        assert value(r, f"mnist_fd_ratio_{smp}") > 5
