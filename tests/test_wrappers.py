"""Model wrappers: exact conversions, classifier-free guidance, re-timing; all keep
``model(x, t, **cond)``."""

from __future__ import annotations

import pytest
import torch

from minigen.eval.gaussian import GaussianTarget
from minigen.recipe.ode_solvers import integrate
from minigen.recipe.paths import VPCosinePath
from minigen.recipe.wrappers import classifier_free_guidance, converted, retimed

F64 = torch.float64
TARGET = GaussianTarget(torch.tensor([1.0, -1.0]), torch.tensor([[0.5, 0.1], [0.1, 0.3]]))


def test_converted_epsilon_network_is_the_exact_velocity():
    path = VPCosinePath()
    eps = lambda x, t: TARGET.epsilon_mean(path, x, t)
    x = torch.randn(50, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.rand(50, dtype=F64, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    assert torch.allclose(converted(eps, path, "epsilon", "velocity")(x, t),
                          TARGET.velocity(path, x, t), atol=1e-10)
    assert converted(eps, path, "epsilon", "epsilon") is eps


def test_classifier_free_guidance_is_the_extrapolation_and_w0_the_conditional_model():
    model = lambda x, t, label=None: x + (0.0 if label is None else label)
    x, t = torch.zeros(3, 2), torch.zeros(3)
    for w in (0.0, 0.5, 3.0):
        g = classifier_free_guidance(model, w, unconditional={"label": None})
        assert torch.allclose(g(x, t, label=2.0), torch.full((3, 2), (1 + w) * 2.0))
    with pytest.raises(ValueError, match="w"):
        classifier_free_guidance(model, -1.0)


def test_retimed_field_is_an_exact_change_of_variables():
    """dx/dtau = f(x, tau) on [0, 1] equals dx/dt = tau'(t) f(x, tau(t)) with tau = t²."""
    f = lambda x, tau: torch.stack([x[:, 1], -x[:, 0] * (1 + tau)], 1)
    x0 = torch.tensor([[1.0, 0.0], [0.3, -0.2]], dtype=F64)
    ref = integrate(f, x0, "rk4", 400).x
    g = retimed(f, lambda t: t ** 2, rate=lambda t: 2 * t)
    assert torch.allclose(integrate(g, x0, "rk4", 400).x, ref, atol=1e-8)
    unscaled = retimed(f, lambda t: t ** 2)  # not a rate: same value at the mapped time
    x, t = x0, torch.tensor([0.5, 0.5], dtype=F64)
    assert torch.allclose(unscaled(x, t), f(x, t ** 2))
