"""Chapter 08's quick-mode figures (``notebooks/08_latent_models.py``), asserted as properties."""

from __future__ import annotations

from chapters.helpers import quick_results, value


def test_08_latent_models():
    r = quick_results("08_latent_models")
    # standardised training latents have zero mean and unit variance per channel, whatever the
    # raw scale the autoencoder left them at
    assert value(r, "latent_mean_max_abs") < 1e-4
    assert value(r, "latent_std_max_abs_err") < 1e-3
    # even 60 quick steps reconstruct better than the mean training image
    assert value(r, "ae_test_mse") < value(r, "mean_image_test_mse")
    # the latent sampler costs fewer network FLOPs per sample than the pixel U-Net: a property
    # of the two architectures, not of training
    assert value(r, "ratio_flops_pixel_over_latent") > 5
    assert value(r, "fd_floor") > 0
    assert value(r, "pixel_steps") == 40
