"""The notebooks' recorded figures, asserted against quick-mode thresholds.

``make test`` executes every notebook once in quick mode (``python -m
minigen.workbook.reproduce --quick``), which writes ``results/quick/<chapter>.json``; these
tests read those files. Run alone, a missing file is produced by executing that
chapter first (outside CI); under CI a missing file fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def quick_results(chapter: str) -> dict:
    path = ROOT / "results" / "quick" / f"{chapter}.json"
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: the quick notebook run did not record it")
        subprocess.run([sys.executable, "-m", "minigen.workbook.reproduce", chapter[:2], "--quick"],
                       cwd=ROOT, check=True)
    return json.loads(path.read_text())


def value(res: dict, name: str) -> float:
    assert name in res["metrics"], f"{res['chapter']} did not record {name}"
    return res["metrics"][name]["value"]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_notebook_structure(chapter):
    src = (ROOT / "notebooks" / f"{chapter}.py").read_text()
    assert len(re.findall(r'tags=\["parameters"\]', src)) == 1, "exactly one parameters cell"
    assert "quick_from_env()" in src, "the parameters cell reads quick mode from the environment"
    assert "## Summary" in src and "## Exercises" in src
    assert "record(" in src
    # a Python string that meant "\\beta" leaves a backspace, which MathJax cannot typeset
    bad = sorted({hex(ord(c)) for c in src if ord(c) < 32 and c != "\n"})
    assert not bad, f"control characters in the source: {bad}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_results_format(chapter):
    res = quick_results(chapter)
    assert res["chapter"] == chapter and res["mode"] == "quick"
    for key in ("seed", "git_sha", "torch", "device", "threads", "wall_s", "metrics"):
        assert key in res
    assert res["metrics"], "no metrics recorded"
    for name, m in res["metrics"].items():
        assert set(m) == {"value", "unit", "better"}, name
        assert m["better"] in ("lower", "higher"), name


def test_00_unified_picture():
    r = quick_results("00_unified_picture")
    for p in ("linear", "vp_cosine", "vp_linear", "ve"):
        assert value(r, f"conversion_rel_err_{p}") < 1e-6
    for p in ("linear", "vp_cosine", "vp_linear"):
        # 2000 samples: the sample mean's error is about sqrt(trace(Sigma) / n) = 0.027
        assert value(r, f"pushforward_mean_err_{p}") < 0.1
        assert value(r, f"pushforward_cov_err_{p}") < 0.15


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


def test_03_score_sde():
    r = quick_results("03_score_sde")
    # the simulated noising SDE has the path's marginal: std of (x_t - alpha x1) / sigma is 1
    # (8000 values: standard error 0.008; measured within 0.006 of 1)
    for name in ("vp", "subvp", "ve"):
        for t in ("0.5", "0"):
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
    for smp in ("em", "pc", "ode"):
        assert 0.1 <= value(r, f"mnist_top_class_prob_{smp}") <= 1.0
        assert value(r, f"mnist_fd_ratio_{smp}") > 1.0  # measured 24-28: untrained, far from the floor


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


def test_04_straight_paths():
    r = quick_results("04_straight_paths")
    # exact Gaussian field: the identity E|X1-X0|² - E|Z1-Z0|² = V + S closes to Monte Carlo error
    # (measured 0.60 SE), and both extra terms of the any-field identity vanish (0.80, 0.65 SE)
    assert value(r, "gauss_identity_gap_over_se") < 3
    assert value(r, "gauss_kinetic_mismatch_over_se") < 3
    assert value(r, "gauss_cross_over_se") < 3
    assert value(r, "gauss_rf2_straightness") < 1e-8  # the 2-RF of Gaussians is straight
    # reflow never raises the transport cost (within 2 combined standard errors)
    # (measured cost_z 7.95 -> 7.58 -> 7.48, SEs 0.23-0.27)
    for a, b in (("1RF", "2RF"), ("2RF", "3RF")):
        se = (value(r, f"cost_z_se_{a}") ** 2 + value(r, f"cost_z_se_{b}") ** 2) ** 0.5
        assert value(r, f"cost_z_{b}") <= value(r, f"cost_z_{a}") + 2 * se
    # one reflow straightens and makes one Euler step work
    # (measured: S 4.40 -> 0.10; one-step W2² 5.48 -> 0.97; distilled 0.76)
    assert value(r, "straightness_2RF") < value(r, "straightness_1RF") / 10
    assert value(r, "w2sq_euler1_2RF") < value(r, "w2sq_euler1_1RF") / 3
    assert value(r, "w2sq_euler1_3RF_distilled") < value(r, "w2sq_euler1_1RF") / 3
    for k in ("1RF", "2RF", "3RF"):
        # learned fields: the paper's identity accounts for the cost change up to 10% of the cost
        # (measured gaps 1.25, 0.012, 0.053 against costs 36.1, 7.85, 7.55)
        assert abs(value(r, f"gap_{k}")) < 0.1 * value(r, f"cost_x_{k}")
        # and the four-term identity lhs = L + S + (K_X - K_Z) + 2C closes for any field
        # (measured 0.0 in float64: per sample it is algebra on one quadrature grid)
        assert value(r, f"identity_any_field_closure_{k}") < 1e-5 * value(r, f"cost_x_{k}")
    # Rectified Diffusion: students on the teacher's pairs beat the teacher's 4-step result in one
    # step, and the curved VP student (x1-prediction) is far less straight than the linear one.
    # In quick mode the VP teacher is badly undertrained (250 steps: its best 4-step W2² is 18.3,
    # students 2.8 and 2.0), so this checks the code path and the direction only; the full run
    # measures it properly.
    best4 = min(value(r, "rd_ddim4_teacher"), value(r, "rd_euler4_teacher"))
    assert value(r, "rd_ddim1_a_vp_x1") < best4
    assert value(r, "rd_ddim1_b_linear") < best4
    assert value(r, "rd_straightness_a_vp_x1") > 10 * value(r, "rd_straightness_b_linear")  # 18858 vs 4.4
    # time samplers x {U-Net, patch transformer}: one training step each, a smoke test; every FD
    # must stay above the real-vs-real floor (measured 205-324 against 26.9)
    for net in ("", "_dit"):
        for s in ("uniform", "logit_normal", "mode"):
            assert value(r, f"fd_euler4_{s}{net}") > value(r, "fd_floor_digits")


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


def test_06_poisson_flows():
    r = quick_results("06_poisson_flows")
    # the Beta radius sampler matches E|x-y|² = N sigma² D/(D-2) (measured 1.1% at 30000 draws)
    assert value(r, "kernel_moment_rel_err_max") < 0.03
    # the exact-denoiser ODE lands on the data for a heavy kernel and the Gaussian (0.014, 0.011)
    for d in ("D2", "Dinf"):
        assert value(r, f"exact_ode_median_dist_{d}") < 0.05
    # the Gaussian limit (EDM) learns the checkerboard in 300 steps: measured 0.68 (floor 0.16)
    floor = value(r, "w2sq_floor_2d")
    assert floor < value(r, "w2sq_2d_Dinf_alpha0") < 1.0
    assert floor < value(r, "w2sq_2d_D4_alpha0") < 1.5  # measured 0.78
    # PFGM++ §6: state noise alpha = 0.4 hurts smaller D less (increase 0.14, 1.04, 1.48 for
    # D = 2, 4, inf; one training seed)
    assert value(r, "ratio_w2sq_increase_D4_over_Dinf_alpha0.4") < 0.8  # measured 0.70
    assert value(r, "w2sq_increase_2d_D2_alpha0.4") < value(r, "w2sq_increase_2d_D4_alpha0.4")
    # ... but D = 2 has an infinite-variance kernel in 2D and is far less accurate (measured 26x)
    assert value(r, "ratio_w2sq_D2_over_Dinf_alpha0") > 5
    # more Heun steps help every D (measured D4 7.59 > 1.35 > 0.78, Dinf 5.89 > 1.15 > 0.68)
    for d in ("D2", "D4", "Dinf"):
        e = [value(r, f"w2sq_2d_{d}_nfe{k}") for k in (10, 18, 36)]
        assert e == sorted(e, reverse=True)
    # digits: the floor is a fixed computation (6.158); 5-step U-Nets are untrained (FD ratio 41)
    assert abs(value(r, "fd_floor_digits") - 6.158) < 0.05
    for d in ("D16", "Dinf"):
        assert value(r, f"fd_ratio_digits_{d}") > 1.0
