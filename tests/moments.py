"""Shared assertion for sampler tests: sample mean and covariance within Monte Carlo error."""

import torch


def assert_moments(x, mean, cov, disc_mean=0.0, disc_cov=0.0):
    """Mean within 5 standard errors (+ disc_mean), covariance within 5 standard errors of a
    Gaussian's sample covariance (Var S_ij = (S_ii S_jj + S_ij²) / n) (+ disc_cov)."""
    n = len(x)
    se_mean = (cov.diagonal() / n).sqrt()
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    err_mean, err_cov = (x.mean(0) - mean).abs(), (torch.cov(x.T) - cov).abs()
    assert torch.all(err_mean <= 5 * se_mean + disc_mean), (err_mean, se_mean)
    assert torch.all(err_cov <= 5 * se_cov + disc_cov), (err_cov, se_cov)
