"""Chapter 02's quick-mode figures (``notebooks/02_denoising_diffusion.py``), asserted as properties."""

from __future__ import annotations

from chapters.helpers import quick_results, value


def test_02_denoising_diffusion():
    r = quick_results("02_denoising_diffusion")
    # DDPM's schedule is the VP path: log-gap sum(beta²)/2 bounds it (measured 9.9e-4)
    assert value(r, "vp_alpha_max_err") < 2e-3
    # 20000 chains x 500 steps vs eq. 4: SE of the mean 0.0068 (measured error 0.0014)
    assert value(r, "forward_mean_err_500") < 0.03
    assert value(r, "conversion_max_err") < 1e-4
    # the full T = 1000 chain reaches the moons after 600 quick steps (measured 0.36; floor 0.019)
    assert value(r, "w2sq_ancestral_T1000_moons") < 0.5
    # more DDIM steps help (measured 4.35 -> 2.56 after 600 quick steps)
    assert value(r, "w2sq_DDIM_eta0_50_moons") < value(r, "w2sq_DDIM_eta0_10_moons")
    # the bound is in nats per point and finite for both losses
    for kind in ("simple", "vlb"):
        assert 0 < value(r, f"nll_{kind}_moons") < 10
    # beta_tilde is the tighter variance only for a point mass: the bound pays for it here
    assert value(r, "nll_simple_beta_tilde_moons") > value(r, "nll_simple_beta_moons")
    # image code path: bits/dim of a barely trained U-Net are finite and above 0
    assert 0 < value(r, "bpd_ddpm_bound") < 20
    # the fitted per-step variances minimise each KL term: on test images the bound is no worse
    # than with sigma² = beta_k even for a 5-step U-Net (measured 11.71 vs 11.78, 11.02 vs 11.06;
    # the stratified estimates share their noise draws)
    for name in ("L_simple", "bound-tuned"):
        assert value(r, f"bpd_{name}_fitted") < value(r, f"bpd_{name}_beta") + 0.01
    # the level decoder (grey-level histogram as prior) beats the fitted Gaussian decoder on the
    # same variances and noise draws (measured 10.96 vs 11.71, 10.28 vs 11.02 bits/dim)
    for name in ("L_simple", "bound-tuned"):
        assert value(r, f"bpd_{name}_fitted_levels") < value(r, f"bpd_{name}_fitted")
    assert 2 < value(r, "bpd_independent_pixels") < 4  # measured 2.485 on the 14x14 test split
