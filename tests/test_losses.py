"""Distances: iCT's Pseudo-Huber constant and the whole-example norm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmjax.objectives import distances as losses


def test_pseudo_huber_c_for_paper_resolutions():
    assert round(losses.default_pseudo_huber_c(32 * 32 * 3), 4) == 0.0299
    assert round(losses.default_pseudo_huber_c(64 * 64 * 3), 4) == 0.0599


def test_pseudo_huber_is_a_norm_over_the_whole_example():
    a = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    b = jnp.zeros_like(a)
    c = 0.03
    got = np.asarray(losses.pseudo_huber(a, b, c))
    sq = np.sum(np.asarray(a, np.float64) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(got, np.sqrt(sq + c**2) - c, rtol=1e-5)
    elementwise = np.sum(np.sqrt(np.asarray(a, np.float64) ** 2 + c**2) - c, axis=(1, 2, 3))
    assert np.all(np.abs(got - elementwise) > 0.5 * got)  # the element-wise form is far off


def test_cauchy_and_l2_values():
    a = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    b = jnp.zeros_like(a)
    np.testing.assert_allclose(losses.l2(a, b), [5.0, 0.0])
    np.testing.assert_allclose(losses.squared_l2(a, b), [25.0, 0.0])
    np.testing.assert_allclose(losses.cauchy(a, b, 0.5), [np.log1p(25 / 0.5), 0.0], rtol=1e-6)
    np.testing.assert_allclose(
        losses.pseudo_huber(a, b, 0.5), [np.sqrt(25.25) - 0.5, 0.0], rtol=1e-6
    )


def test_l2_gradient_is_finite_at_zero():
    g = jax.grad(lambda a: losses.l2(a, jnp.zeros_like(a)).sum())(jnp.zeros((2, 3)))
    assert np.all(np.isfinite(g))


def test_distance_lookup_errors_name_the_choices():
    with pytest.raises(ValueError, match="pseudo_huber"):
        losses.get_distance("huber")
    with pytest.raises(ValueError, match="equal shapes"):
        losses.pseudo_huber(jnp.zeros((2, 3)), jnp.zeros((2, 4)), 0.1)
