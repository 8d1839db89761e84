"""DDPM++ (EDM's SongUNet, ddpmpp settings): exact parameter counts, EDM's initialization, a
block checked against a numpy transcription of EDM's UNetBlock.forward (NCHW, its qkv reshape),
embeddings against EDM's / ADM's formulas, labels and augmentation inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmjax.models import build_model
from cmjax.models.ddpmpp import DDPMPP_CIFAR10, SongUNetBlock
from cmjax.models.embeddings import embed_time
from cmjax.models.layers import fir_downsample_2x, fir_upsample_2x


def _count(model, labels=None):
    shape = (1, 32, 32, 3)
    variables = jax.eval_shape(
        lambda: model.init(
            {"params": jax.random.key(0)}, jnp.zeros(shape), jnp.zeros((1,)), labels, False
        )
    )
    return sum(math.prod(x.shape) for x in jax.tree.leaves(variables))


@pytest.mark.parametrize(
    "overrides,expected",
    [({}, 55_732_739), ({"augment_dim": 9}, 55_733_891), ({"num_classes": 10}, 55_734_147)],
)
def test_parameter_counts_match_edm(overrides, expected):
    """docs/objectives.md (EDM): EDM's DDPM++ counted exactly."""
    cfg = {**DDPMPP_CIFAR10, **overrides}
    labels = jnp.zeros((1,), jnp.int32) if cfg["num_classes"] else None
    assert _count(build_model(cfg), labels) == expected


def test_box_filter_resampling_is_average_pool_and_nearest():
    """EDM's resample_filter [1, 1]: conv2d stride 2 with a 2x2 box (down), conv_transpose2d
    with 4 x box (up), i.e. average pooling and nearest-neighbour upsampling."""
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 4, 6, 3)))
    down = np.asarray(fir_downsample_2x(jnp.asarray(x), (1, 1)))
    np.testing.assert_allclose(down, x.reshape(2, 2, 2, 3, 2, 3).mean(axis=(2, 4)), atol=1e-6)
    up = np.asarray(fir_upsample_2x(jnp.asarray(x), (1, 1)))
    np.testing.assert_allclose(up, x.repeat(2, axis=1).repeat(2, axis=2), atol=1e-6)


def test_positional_embeddings_match_edm_and_adm_formulas():
    t = np.array([0.0, 0.37, -1.5, 80.0])
    # EDM PositionalEmbedding(128, endpoint=True), then SongUNet's sin/cos swap.
    freqs = (1 / 10_000) ** (np.arange(64) / 63)
    edm = np.concatenate([np.sin(np.outer(t, freqs)), np.cos(np.outer(t, freqs))], axis=1)
    got = embed_time("positional", jnp.asarray(t, jnp.float32), 128, fourier_scale=0.0)
    np.testing.assert_allclose(got, edm, atol=2e-5)
    # guided-diffusion's timestep_embedding(t, 192): exp(-ln(10000) i / 96), cos first.
    freqs = np.exp(-math.log(10_000) * np.arange(96) / 96)
    adm = np.concatenate([np.cos(np.outer(t, freqs)), np.sin(np.outer(t, freqs))], axis=1)
    got = embed_time(
        "positional",
        jnp.asarray(t, jnp.float32),
        192,
        fourier_scale=0.0,
        endpoint=False,
        sin_first=False,
    )
    np.testing.assert_allclose(got, adm, atol=2e-5)
    with pytest.raises(ValueError, match="time_embedding must be one of"):
        embed_time("sinusoid", jnp.asarray(t), 8, fourier_scale=1.0)


# ---- numpy transcription of EDM's UNetBlock.forward (NCHW) ----


def _gn(x, p, eps=1e-6):
    """torch group_norm(x, min(32, C // 4), weight, bias, eps)."""
    n, c, h, w = x.shape
    g = min(32, c // 4)
    y = x.reshape(n, g, c // g, h, w)
    y = (y - y.mean(axis=(2, 3, 4), keepdims=True)) / np.sqrt(
        y.var(axis=(2, 3, 4), keepdims=True) + eps
    )
    y = y.reshape(n, c, h, w)
    return (
        y * np.asarray(p["scale"])[None, :, None, None] + np.asarray(p["bias"])[None, :, None, None]
    )


def _conv(x, p):
    """torch conv2d(x, weight, bias, padding=k // 2) with a flax HWIO kernel."""
    w = np.asarray(p["kernel"]).transpose(3, 2, 0, 1)
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    h, wd = x.shape[2:]
    out = sum(
        np.einsum("nchw,oc->nohw", xp[:, :, i : i + h, j : j + wd], w[:, :, i, j])
        for i in range(k)
        for j in range(k)
    )
    return out + np.asarray(p["bias"])[None, :, None, None]


def _silu(x):
    return x / (1 + np.exp(-x))


def _resample(x, up, down):
    if up:
        return x.repeat(2, axis=2).repeat(2, axis=3)
    if down:
        n, c, h, w = x.shape
        return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    return x


def _edm_block(x, emb, p, up, down, attention):
    orig = x
    x = _conv(_resample(_silu(_gn(x, p["norm0"])), up, down), p["conv0"])
    params = emb @ np.asarray(p["affine"]["kernel"]) + np.asarray(p["affine"]["bias"])
    x = _silu(_gn(x + params[:, :, None, None], p["norm1"]))
    x = _conv(x, p["conv1"])
    skip = _conv(_resample(orig, up, down), p["skip"]) if "skip" in p else orig
    x = x + skip
    x = x * np.sqrt(0.5)
    if attention:
        n, c, h, w = x.shape
        heads = 1
        qkv = _conv(_gn(x, p["norm2"]), p["qkv"]).reshape(n * heads, c // heads, 3, h * w)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = np.einsum("ncq,nck->nqk", q, k / np.sqrt(k.shape[1]))
        wts = np.exp(logits - logits.max(axis=2, keepdims=True))
        wts = wts / wts.sum(axis=2, keepdims=True)
        a = np.einsum("nqk,nck->ncq", wts, v)
        x = (_conv(a.reshape(n, c, h, w), p["proj"]) + x) * np.sqrt(0.5)
    return x


@pytest.mark.parametrize(
    "in_ch,out_ch,up,down,attention",
    [(8, 16, False, False, True), (8, 8, False, True, False), (16, 8, True, False, True)],
)
def test_block_matches_edm_unetblock(in_ch, out_ch, up, down, attention):
    block = SongUNetBlock(out_ch=out_ch, up=up, down=down, attention=attention)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, in_ch))
    emb = jax.random.normal(jax.random.key(1), (2, 32))
    shapes = jax.eval_shape(lambda: block.init(jax.random.key(2), x, emb, False))
    rng = np.random.default_rng(0)
    v = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), jnp.float32), shapes)
    got = np.asarray(jax.jit(lambda: block.apply(v, x, emb, False))()).transpose(0, 3, 1, 2)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), v["params"])
    want = _edm_block(
        np.asarray(x, np.float64).transpose(0, 3, 1, 2),
        np.asarray(emb, np.float64),
        p,
        up,
        down,
        attention,
    )
    assert sorted(p) == sorted(
        ["norm0", "conv0", "affine", "norm1", "conv1"]
        + (["skip"] if in_ch != out_ch or up or down else [])
        + (["norm2", "qkv", "proj"] if attention else [])
    )
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_initialization_follows_edm():
    """Xavier-uniform weights, zero biases; conv1 / proj x 1e-5; qkv x sqrt(0.2)."""
    block = SongUNetBlock(out_ch=64, attention=True)
    x, emb = jnp.zeros((1, 8, 8, 32)), jnp.zeros((1, 128))
    p = jax.jit(lambda k: block.init(k, x, emb, False))(jax.random.key(0))["params"]

    def xavier_std(kernel, gain2=1.0):
        rf = math.prod(kernel.shape[:-2])
        return math.sqrt(gain2 * 2.0 / (rf * kernel.shape[-2] + rf * kernel.shape[-1]))

    for name, gain2 in [
        ("conv0", 1.0),
        ("affine", 1.0),
        ("skip", 1.0),
        ("conv1", 1e-10),
        ("qkv", 0.2),
        ("proj", 1e-10),
    ]:
        w = np.asarray(p[name]["kernel"])
        std = xavier_std(w, gain2)
        np.testing.assert_allclose(w.std(), std, rtol=0.08, err_msg=name)
        assert np.abs(w).max() <= math.sqrt(3) * std * (1 + 1e-6), name
        assert np.all(np.asarray(p[name]["bias"]) == 0), name
    for name in ("norm0", "norm1", "norm2"):
        assert np.all(np.asarray(p[name]["scale"]) == 1) and np.all(
            np.asarray(p[name]["bias"]) == 0
        )


@pytest.fixture(scope="module")
def mini():
    """A one-level DDPM++ on 4x4 images with 3 classes and EDM's augmentation input."""
    cfg = dict(
        name="ddpmpp",
        model_channels=8,
        channel_mult=(1,),
        num_blocks=1,
        attn_resolutions=(),
        dropout=0.0,
        num_classes=3,
        augment_dim=9,
    )
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    labels = jnp.array([0, 1])
    model = build_model(cfg)
    shapes = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0)}, x, jnp.zeros((2,)), labels)
    )
    rng = np.random.default_rng(0)
    v = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)
    return cfg, x, v


def test_labels_enter_as_a_linear_map_of_the_one_hot_with_label_dropout(mini):
    cfg, x, v = mini
    assert v["params"]["map_label"]["kernel"].shape == (3, 8)  # Linear(label_dim -> 128 ch)
    c = jnp.array([0.2, -0.4])
    rngs = {"dropout": jax.random.key(1)}
    keep = build_model(cfg)
    drop = build_model({**cfg, "label_dropout": 1.0})

    @jax.jit
    def outputs(labels):
        return (
            keep.apply(v, x, c, labels, True, rngs=rngs),
            drop.apply(v, x, c, labels, True, rngs=rngs),
            drop.apply(v, x, c, labels, False, rngs=rngs),
        )

    (k1, d1, e1), (k2, d2, e2) = outputs(jnp.array([0, 1])), outputs(jnp.array([2, 2]))
    assert float(jnp.abs(k1 - k2).max()) > 1e-3  # labels matter ...
    np.testing.assert_array_equal(d1, d2)  # ... unless all dropped (training only)
    assert float(jnp.abs(e1 - e2).max()) > 1e-3


def test_augment_labels(mini):
    cfg, x, v = mini
    model = build_model(cfg)
    c, labels = jnp.array([0.2, -0.4]), jnp.array([0, 1])
    assert v["params"]["map_augment"]["kernel"].shape == (9, 8)
    assert "bias" not in v["params"]["map_augment"]
    run = jax.jit(lambda a: model.apply(v, x, c, labels, augment_labels=a))
    base = jax.jit(lambda: model.apply(v, x, c, labels))()
    np.testing.assert_array_equal(run(jnp.zeros((2, 9))), base)  # zeros = no augmentation
    assert float(jnp.abs(run(jnp.ones((2, 9))) - base).max()) > 1e-3
    with pytest.raises(ValueError, match=r"augment_labels must have shape \(2, 9\)"):
        jax.eval_shape(lambda: model.apply(v, x, c, labels, augment_labels=jnp.zeros((2, 3))))
