"""Small networks: shapes, label handling, dropout determinism, config errors."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmjax.config.loading import load_config
from cmjax.errors import ConfigError
from cmjax.models import build_model
from cmjax.models.adm import ADMResBlock
from cmjax.models.ddpmpp import SongUNetBlock
from cmjax.models.layers import modulate, pixel_norm


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
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.py")


TINY = {
    "mlp": (dict(name="mlp", hidden=16, depth=1, num_fourier=4), (2, 2)),
    "unet_small": (
        dict(name="unet_small", channels=8, channel_mult=(1,), num_fourier=4),
        (2, 4, 4, 3),
    ),
    "ncsnpp": (
        dict(name="ncsnpp", nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=()),
        (2, 4, 4, 3),
    ),
    "adm": (
        dict(
            name="adm",
            model_channels=8,
            channel_mult=(1,),
            num_res_blocks=1,
            attn_resolutions=(),
            num_head_channels=8,
            norm_groups=2,
            num_classes=0,
        ),
        (2, 4, 4, 3),
    ),
    "ddpmpp": (
        dict(name="ddpmpp", model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=()),
        (2, 4, 4, 3),
    ),
}


def _param_count(cfg, shape, **overrides):
    model = build_model({**cfg, **overrides})
    variables = jax.eval_shape(lambda: _init(model, jnp.zeros(shape)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(variables))


# (time embedding size, first time-MLP width, default time_embedding) of each TINY network.
EMBEDDING_SIZES = {
    "mlp": (8, 16, "fourier"),
    "unet_small": (8, 32, "fourier"),
    "ncsnpp": (16, 32, "fourier"),
    "adm": (8, 32, "positional"),
    "ddpmpp": (8, 32, "positional"),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_second_time_input_adds_its_own_embedding_and_projection(name):
    """h gets an embedding of the same kind (+ its own Fourier W) and a bias-free Dense."""
    cfg, shape = TINY[name]
    dim, width, kind = EMBEDDING_SIZES[name]
    base = _param_count(cfg, shape)
    extra = dim * width + (dim // 2 if kind == "fourier" else 0)
    assert _param_count(cfg, shape, second_time_input=True) == base + extra


@pytest.mark.parametrize("name", sorted(TINY))
def test_time_embedding_switch(name):
    """Fourier features keep a (non-trained) W of dim / 2 frequencies; sinusoids have none."""
    cfg, shape = TINY[name]
    dim, width, kind = EMBEDDING_SIZES[name]
    other = "positional" if kind == "fourier" else "fourier"
    model = build_model({**cfg, "time_embedding": other})
    variables = jax.eval_shape(lambda: _init(model, jnp.zeros(shape)))
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    fourier_w = [x for path, x in leaves if jax.tree_util.keystr(path).endswith("['W']")]
    if other == "fourier":
        assert [x.shape for x in fourier_w] == [(dim // 2,)]
    else:
        assert fourier_w == []
    with pytest.raises(ValueError, match="time_embedding must be one of"):
        bad = build_model({**cfg, "time_embedding": "sinusoidal"})
        jax.eval_shape(lambda: _init(bad, jnp.zeros(shape)))


@pytest.mark.parametrize("kind", ["fourier", "positional"])
def test_second_time_input_behaviour(kind):
    cfg = dict(name="mlp", hidden=16, depth=1, num_fourier=4, time_embedding=kind)
    model = build_model({**cfg, "second_time_input": True})
    x, t, h = jnp.ones((2, 2)), jnp.array([0.3, 0.9]), jnp.array([0.1, 0.0])
    v = _init(model, x)  # init without h creates the h parameters
    assert "h_embedding_proj" in v["params"]
    out = model.apply(v, x, t, h=h)
    assert float(jnp.abs(out - model.apply(v, x, t, h=h + 0.5)).max()) > 1e-4
    # Not a symmetric function of (t, h), as a sum of the two raw embeddings would be.
    assert float(jnp.abs(model.apply(v, x, t, h=t) - model.apply(v, x, h, h=t)).max()) > 1e-4
    with pytest.raises(ValueError, match="takes a second time input"):
        model.apply(v, x, t)
    with pytest.raises(ValueError, match=r"h must have shape \(2,\)"):
        model.apply(v, x, t, h=jnp.zeros((3,)))
    plain = build_model(cfg)
    with pytest.raises(ValueError, match="second_time_input=True"):
        plain.apply(_init(plain, x), x, t, h=h)


def test_keyword_calls_equal_positional_calls():
    model = build_model(dict(name="mlp", hidden=16, depth=1, num_classes=3, dropout=0.5))
    x, c, labels = jnp.ones((2, 2)), jnp.array([0.1, 0.2]), jnp.array([0, 2])
    v = _init(model, x, labels)
    rngs = {"dropout": jax.random.key(0)}
    np.testing.assert_array_equal(
        model.apply(v, x, c, labels, True, rngs=rngs),
        model.apply(v, x=x, noise_cond=c, labels=labels, train=True, h=None, rngs=rngs),
    )


def test_pixel_norm_and_modulation_formulas():
    a = np.asarray(jax.random.normal(jax.random.key(0), (3, 5)))
    want = a / np.sqrt((a**2).mean(axis=-1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(pixel_norm(jnp.asarray(a)), want, rtol=1e-5)
    normed = jax.random.normal(jax.random.key(1), (3, 2, 2, 5))
    s, b = jnp.asarray(a), jnp.asarray(a[::-1])
    np.testing.assert_allclose(
        modulate(normed, s, b, double_norm=True),
        normed * want[:, None, None, :] + want[::-1][:, None, None, :],
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        modulate(normed, s, b), normed * (1 + a[:, None, None, :]) + a[::-1][:, None, None, :]
    )


@pytest.mark.parametrize("block_name", ["adm", "ddpmpp"])
def test_adaptive_double_norm_is_invariant_to_the_scale_of_the_modulation(block_name):
    """pnorm(7 a) = pnorm(a): scaling AdaGN's projection leaves the block output unchanged
    with adaptive double normalization, and changes it with plain scale-shift norm."""
    if block_name == "adm":
        block, proj = functools.partial(ADMResBlock, norm_groups=2), "Dense_0"
    else:
        block, proj = SongUNetBlock, "affine"
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    emb = jax.random.normal(jax.random.key(1), (2, 16))
    outs = {}
    for double in (False, True):
        m = block(out_ch=8, use_scale_shift_norm=True, adaptive_double_norm=double)
        shapes = jax.eval_shape(lambda m=m: m.init(jax.random.key(0), x, emb, False))
        rng = np.random.default_rng(0)
        v = jax.tree.map(lambda s, r=rng: jnp.asarray(0.3 * r.standard_normal(s.shape)), shapes)
        scaled = jax.tree.map(lambda p: p, v)
        scaled["params"][proj] = jax.tree.map(lambda p: 7.0 * p, v["params"][proj])
        outs[double] = [m.apply(p, x, emb, False) for p in (v, scaled)]
    np.testing.assert_allclose(*outs[True], rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(outs[False][0] - outs[False][1]).max()) > 1e-2


@pytest.mark.parametrize("name", ["adm", "ddpmpp"])
def test_adaptive_double_norm_needs_scale_shift_norm(name):
    cfg, shape = TINY[name]
    model = build_model({**cfg, "adaptive_double_norm": True})
    with pytest.raises(ValueError, match="use_scale_shift_norm=True"):
        jax.eval_shape(lambda: _init(model, jnp.zeros(shape)))
    # With it: sCM's AdaGN doubles each block's embedding projection, as ADM's scale-shift.
    assert _param_count(cfg, shape, use_scale_shift_norm=True, adaptive_double_norm=True) == (
        _param_count(cfg, shape, use_scale_shift_norm=True)
    )
