"""Small networks: shapes, label handling, dropout determinism, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmjax.config_loading import load_config
from cmjax.models import build_model


def _init(model, x, labels=None):
    return model.init({"params": jax.random.key(0)}, x, jnp.zeros((x.shape[0],)), labels, False)


@pytest.mark.parametrize(
    "cfg,shape",
    [
        (dict(name="mlp", hidden=16, depth=1), (3, 2)),
        (dict(name="unet_small", channels=8, channel_mult=(1, 2)), (2, 8, 8, 3)),
        (dict(name="unet_small", channels=8, channel_mult=[1, 2, 2]), (2, 16, 16, 1)),
    ],
)
def test_output_shape_equals_input_shape(cfg, shape):
    model = build_model(cfg)
    x = jnp.ones(shape)
    variables = _init(model, x)
    out = model.apply(variables, x, jnp.zeros((shape[0],)), None, False)
    assert out.shape == shape and out.dtype == jnp.float32


def test_conditional_models_need_labels_and_use_them():
    model = build_model(dict(name="mlp", hidden=16, depth=1, num_classes=4))
    x = jnp.ones((2, 2))
    with pytest.raises(ValueError, match="class-conditional"):
        _init(model, x)
    variables = _init(model, x, jnp.array([0, 1]))
    a = model.apply(variables, x, jnp.zeros((2,)), jnp.array([0, 0]), False)
    b = model.apply(variables, x, jnp.zeros((2,)), jnp.array([3, 3]), False)
    assert float(jnp.abs(a - b).max()) > 0
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        model.apply(variables, x, jnp.zeros((2,)), jnp.array([0, 1, 2]), False)


def test_dropout_is_keyed():
    model = build_model(dict(name="unet_small", channels=8, channel_mult=(1,), dropout=0.5))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    v = _init(model, x)
    # The last conv of each res block starts at zero; perturb it so dropout shows in the output.
    v = jax.tree.map(lambda p: p + 0.1, v)
    c = jnp.zeros((2,))

    def run(key):
        return model.apply(v, x, c, None, True, rngs={"dropout": jax.random.key(key)})

    np.testing.assert_array_equal(
        model.apply(v, x, c, None, False), model.apply(v, x, c, None, False)
    )
    np.testing.assert_array_equal(run(0), run(0))
    assert float(jnp.abs(run(0) - run(1)).max()) > 1e-3


def test_build_model_rejects_unknown_names_and_keys():
    with pytest.raises(ValueError, match="unknown config.model.name 'ncsnpp_typo'"):
        build_model(dict(name="ncsnpp_typo"))
    with pytest.raises(ValueError, match=r"config\.model\.hiden"):
        build_model(dict(name="mlp", hiden=3))


def test_load_config_by_name_and_path():
    assert load_config("toy2d:two_moons").data.distribution == "two_moons"
    assert load_config("configs/toy2d.py").data.distribution == "gaussian_mixture"
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config("configs/nope.py")
