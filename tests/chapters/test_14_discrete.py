"""Chapter 14's quick-mode figures (``notebooks/14_discrete.py``), asserted as properties."""

from __future__ import annotations

import math

from chapters.helpers import quick_results, value


def test_14_discrete():
    r = quick_results("14_discrete")
    uniform = 64 * math.log(17)
    # every likelihood is on the nats-per-image scale, below the uniform model's 181.3 by
    # construction of the baseline, and each model is recorded with its kind of figure
    assert 0 < value(r, "nats_digits_independent") < uniform
    for name in ("nats_digits_ar", "nats_digits_masked_elbo", "nats_digits_masked_elbo_T1"):
        assert 0 < value(r, name) < 2 * uniform
    assert value(r, "shared_nll_digits_nats_per_image") == value(r, "nats_digits_ar")
    assert value(r, "shared_nfe") == 64
    # the KV cache returns the uncached logits (float32, a trained model)
    assert value(r, "kv_max_logit_error") < 1e-4
    # static batches pay max(lengths) per batch; in-flight batching needs fewer steps for the
    # same 48 requests, and at least their total length over the 8 slots
    assert value(r, "batching_steps_inflight") < value(r, "batching_steps_static")
    # RVQ: the training error falls with depth (a property of residual k-means), the test
    # error with it
    for split in ("train", "test"):
        mse = [value(r, f"rvq_mse_{split}_depth{d}") for d in range(1, 5)]
        assert mse == sorted(mse, reverse=True) and mse[-1] < 0.5 * mse[0]
    # the depth-4 reconstructions are nearer the held-out digits than ResGen's samples
    assert value(r, "fd_digits_rvq_reconstruction") < value(r, "fd_digits_resgen_T16")
    for T in (1, 4, 16):
        assert value(r, f"fd_digits_resgen_T{T}") > 0
    # MaM answers a marginal in one call where the chain rule needs up to 10
    assert value(r, "mam_calls_per_marginal") == 1 and value(r, "arm_calls_per_marginal") == 10
    assert value(r, "mam_marginal_abs_error") >= 0 and value(r, "mam_normalisation_error") >= 0
