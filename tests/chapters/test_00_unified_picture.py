"""Chapter 00's quick-mode figures (``notebooks/00_unified_picture.py``), asserted as properties."""

from __future__ import annotations

from chapters.helpers import quick_results, value


def test_00_unified_picture():
    r = quick_results("00_unified_picture")
    for p in ("linear", "vp_cosine", "vp_linear", "ve"):
        assert value(r, f"conversion_rel_err_{p}") < 1e-6
    for p in ("linear", "vp_cosine", "vp_linear"):
        # 2000 samples: the sample mean's error is about sqrt(trace(Sigma) / n) = 0.027
        assert value(r, f"pushforward_mean_err_{p}") < 0.1
        assert value(r, f"pushforward_cov_err_{p}") < 0.15
