"""The paper networks: exact parameter counts, shapes, labels, dropout, bf16, FIR resampling."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmjax.config_loading import load_config
from cmjax.models import build_model
from cmjax.models.layers import fir_downsample_2x, fir_upsample_2x, spatial_attention


def _abstract_params(model, shape, labels=None):
    return jax.eval_shape(
        lambda: model.init(
            {"params": jax.random.key(0)}, jnp.zeros(shape), jnp.zeros(shape[:1]), labels, False
        )
    )


def _count(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "spec,shape,expected",
    [
        ("cifar10_ict", (1, 32, 32, 3), 56_395_651),
        ("cifar10_ict:deep", (1, 32, 32, 3), 97_610_627),
        ("imagenet64_ict", (1, 64, 64, 3), 282_168_003),
    ],
)
def test_paper_network_parameter_counts(spec, shape, expected):
    config = load_config(spec)
    labels = jnp.zeros((1,), jnp.int32) if config.data.num_classes else None
    variables = _abstract_params(build_model(config.model), shape, labels)
    assert _count(variables) == expected
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))


def test_adm_with_scale_shift_norm_matches_reference_count():
    config = load_config("imagenet64_ict")
    config.model.use_scale_shift_norm = True
    labels = jnp.zeros((1,), jnp.int32)
    assert _count(_abstract_params(build_model(config.model), (1, 64, 64, 3), labels)) == (
        295_899_267
    )


@pytest.mark.parametrize("spec", ["cifar10_ict", "imagenet64_ict"])
def test_full_networks_map_images_to_images(spec):
    config = load_config(spec)
    model = build_model(config.model)
    shape = (2, *config.data.shape)
    labels = jnp.zeros((2,), jnp.int32) if config.data.num_classes else None
    params = _abstract_params(model, shape, labels)
    out = jax.eval_shape(
        lambda p: model.apply(p, jnp.zeros(shape), jnp.zeros((2,)), labels, False), params
    )
    assert out.shape == shape and out.dtype == jnp.float32


@pytest.fixture(scope="module")
def tiny():
    """Tiny NCSN++ at 32x32 and tiny conditional ADM at 64x64, with initialized parameters."""
    out = {}
    for spec in ("cifar10_ict:tiny", "imagenet64_ict:tiny"):
        config = load_config(spec)
        model = build_model(config.model)
        shape = (2, *config.data.shape)
        labels = jnp.array([3, 999]) if config.data.num_classes else None
        v = jax.jit(
            lambda k, m=model, s=shape, lab=labels: m.init(
                {"params": k}, jnp.zeros(s), jnp.zeros((2,)), lab, False
            )
        )(jax.random.key(0))
        # Zero-initialized output layers hide everything; perturb so outputs depend on inputs.
        v = jax.tree.map(
            lambda p: p + 0.02 * jnp.sign(jnp.sin(jnp.arange(p.size))).reshape(p.shape), v
        )
        x = jax.random.normal(jax.random.key(1), shape)
        out[spec.split("_")[0]] = (config, model, v, x, labels)
    return out


@pytest.mark.parametrize("name", ["cifar10", "imagenet64"])
def test_tiny_dropout_is_deterministic_per_key(tiny, name):
    _, model, v, x, labels = tiny[name]
    c = jnp.array([0.1, -1.0])

    @jax.jit
    def run(train_key):
        return model.apply(v, x, c, labels, True, rngs={"dropout": train_key})

    evaluate = jax.jit(lambda: model.apply(v, x, c, labels, False))
    ev1, ev2 = evaluate(), evaluate()
    np.testing.assert_array_equal(ev1, ev2)
    assert ev1.shape == x.shape
    np.testing.assert_array_equal(run(jax.random.key(0)), run(jax.random.key(0)))
    assert float(jnp.abs(run(jax.random.key(0)) - run(jax.random.key(1))).max()) > 1e-4


def test_labels_optional_for_ncsnpp_required_for_adm(tiny):
    _, adm, v, x, labels = tiny["imagenet64"]
    with pytest.raises(ValueError, match="class-conditional"):
        jax.eval_shape(lambda: adm.apply(v, x, jnp.zeros((2,)), None, False))
    run = jax.jit(lambda lab: adm.apply(v, x, jnp.zeros((2,)), lab, False))
    a, b = run(labels), run(labels[::-1])
    assert float(jnp.abs(a - b).max()) > 0
    _, ncsnpp, v, x, _ = tiny["cifar10"]
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(lambda: ncsnpp.apply(v, x, jnp.zeros((2,)), jnp.zeros((2,), jnp.int32)))


@pytest.mark.parametrize("name", ["cifar10", "imagenet64"])
def test_bfloat16_compute_tracks_float32(tiny, name):
    """bf16 matmuls/convs (norms and head in f32): relative error below 5% of the output scale."""
    config, _, v, x, labels = tiny[name]
    config.model.dtype = "bfloat16"
    bf16 = build_model(config.model)
    config.model.dtype = "float32"
    f32 = build_model(config.model)
    c = jnp.array([0.1, -1.0])
    out32 = jax.jit(lambda: f32.apply(v, x, c, labels, False))()
    out16 = jax.jit(lambda: bf16.apply(v, x, c, labels, False))()
    assert out16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    print(f"bf16 relative error {name}: {rel:.4f}")
    assert 0 < rel < 0.05, rel


def _upfirdn_reference(x, k1d, up, down, pad0, pad1, gain):
    """Direct numpy upfirdn on one (H, W) channel: zero-insert, pad, convolve, decimate."""
    k = np.outer(k1d, k1d).astype(np.float64)
    k = k / k.sum() * gain
    h, w = x.shape
    z = np.zeros((h * up, w * up))
    z[::up, ::up] = x
    z = np.pad(z, ((pad0, pad1), (pad0, pad1)))
    kh = k.shape[0]
    out = np.zeros((z.shape[0] - kh + 1, z.shape[1] - kh + 1))
    kf = k[::-1, ::-1]
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.sum(z[i : i + kh, j : j + kh] * kf)
    return out[::down, ::down]


def test_fir_resampling_matches_stylegan2_upfirdn():
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 6, 6, 2)))
    k = (1, 3, 3, 1)
    up = np.asarray(fir_upsample_2x(jnp.asarray(x), k))
    down = np.asarray(fir_downsample_2x(jnp.asarray(x), k))
    assert up.shape == (1, 12, 12, 2) and down.shape == (1, 3, 3, 2)
    for c in range(2):
        np.testing.assert_allclose(
            up[0, :, :, c], _upfirdn_reference(x[0, :, :, c], k, 2, 1, 2, 1, 4.0), atol=1e-5
        )
        np.testing.assert_allclose(
            down[0, :, :, c], _upfirdn_reference(x[0, :, :, c], k, 1, 2, 1, 1, 1.0), atol=1e-5
        )


def test_spatial_attention_matches_naive_softmax():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 4, 4, 8)) for i in range(3))
    got = spatial_attention(q, k, v, num_heads=2)
    qh, kh, vh = (t.reshape(2, 16, 2, 4) for t in (q, k, v))
    w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", qh, kh) / 2.0, axis=-1)
    want = jnp.einsum("bhqk,bkhd->bqhd", w, vh).reshape(2, 4, 4, 8)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_bad_inputs_are_named():
    config = load_config("cifar10_ict:tiny")
    model = build_model(config.model)
    with pytest.raises(ValueError, match="divisible"):
        _abstract_params(model, (1, 31, 31, 3))
    config.model.dtype = "float16"
    with pytest.raises(ValueError, match="dtype"):
        _abstract_params(build_model(config.model), (1, 32, 32, 3))
