"""The paper networks: exact parameter counts, shapes, labels, dropout, bf16, FIR resampling."""

import inspect
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmjax.config.loading import load_config
from cmjax.models import MODELS, build_model
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
def tiny_init():
    """Tiny NCSN++ at 32x32 and tiny conditional ADM at 64x64, freshly initialized."""
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
        x = jax.random.normal(jax.random.key(1), shape)
        out[spec.split("_")[0]] = (config, model, v, x, labels)
    return out


def perturb(variables):
    """Zero-initialized output layers hide everything; perturb so outputs depend on inputs."""
    return jax.tree.map(
        lambda p: p + 0.02 * jnp.sign(jnp.sin(jnp.arange(p.size))).reshape(p.shape), variables
    )


@pytest.fixture(scope="module")
def tiny(tiny_init):
    """The tiny networks with perturbed parameters."""
    return {
        name: (config, model, perturb(v), x, labels)
        for name, (config, model, v, x, labels) in tiny_init.items()
    }


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


def _record(module_type, attribute, fn):
    """Run fn() and return [(module path, getattr(module, attribute), input shape)] per call."""
    calls = []

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, module_type) and context.method_name == "__call__":
            calls.append(
                ("/".join(context.module.path), getattr(context.module, attribute), args[0].shape)
            )
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        fn()
    return calls


def test_imagenet64_dropout_only_at_16x16_and_below():
    """iCT's ADM recipe: dropout 0.2 in the res blocks at 16, 8 pixels, none at 64, 32."""
    config = load_config("imagenet64_ict")
    assert config.model.dropout_max_resolution == 16
    model = build_model(config.model)
    shape, labels = (1, 64, 64, 3), jnp.zeros((1,), jnp.int32)
    params = _abstract_params(model, shape, labels)
    calls = _record(
        nn.Dropout,
        "rate",
        lambda: jax.eval_shape(
            lambda p: model.apply(
                p,
                jnp.zeros(shape),
                jnp.zeros((1,)),
                labels,
                True,
                rngs={"dropout": jax.random.key(0)},
            ),
            params,
        ),
    )
    rates = {}
    for _, rate, in_shape in calls:
        rates.setdefault(in_shape[1], set()).add(rate)
    assert rates == {64: {0.0}, 32: {0.0}, 16: {0.2}, 8: {0.2}}
    # Every res block has one dropout: 1 + 3 + 3 (down, blocks) per lower level, middle 2, ...
    assert len(calls) == 3 + 3 * 4 + 2 + 4 * 4 + 3
    # The key's default (0) keeps dropout everywhere, as before.
    config.model.dropout_max_resolution = 0
    assert build_model(config.model).dropout_max_resolution == 0


def test_tiny_adm_dropout_masks_only_low_resolution_maps(tiny):
    """Each Dropout call's input vs output (train=True): at 64x64 untouched; at 32x32 about 20%
    of the entries zeroed and the rest scaled by 1 / 0.8 (the tiny variant's limit is 32)."""
    config, model, v, x, labels = tiny["imagenet64"]
    assert config.model.dropout_max_resolution == 32 and config.model.dropout == 0.2
    rates = []

    def run():
        pairs = []

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if isinstance(context.module, nn.Dropout):
                rates.append(context.module.rate)
                pairs.append((args[0], out))
            return out

        with nn.intercept_methods(interceptor):
            model.apply(
                v, x, jnp.array([0.1, -1.0]), labels, True, rngs={"dropout": jax.random.key(0)}
            )
        return pairs

    pairs = jax.jit(run)()
    seen = {}
    for rate, (a, b) in zip(rates, pairs, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        seen[a.shape[1]] = seen.get(a.shape[1], 0) + 1
        if a.shape[1] > 32:
            assert rate == 0.0
            np.testing.assert_array_equal(a, b)
        else:
            assert rate == 0.2
            dropped = (b == 0) & (a != 0)
            assert 0.15 < dropped.mean() < 0.25, dropped.mean()
            np.testing.assert_allclose(b[~dropped], a[~dropped] / 0.8, rtol=1e-6, atol=1e-7)
    assert seen == {64: 4, 32: 6}


def test_adm_initialization_matches_pytorch_reference(tiny_init):
    """Class embedding N(0, 1) (torch.nn.Embedding) and GroupNorm eps 1e-5 (torch)."""
    _, model, v, x, labels = tiny_init["imagenet64"]
    table = np.asarray(v["params"]["Embed_0"]["embedding"])
    assert table.shape == (1000, 64)
    assert abs(table.std() - 1.0) < 0.02 and abs(table.mean()) < 0.02
    eps = _record(
        nn.GroupNorm,
        "epsilon",
        lambda: jax.eval_shape(lambda: model.apply(v, x, jnp.zeros((2,)), labels, False)),
    )
    assert eps and {e for _, e, _ in eps} == {1e-5}


def test_ncsnpp_keeps_the_reference_groupnorm_eps(tiny_init):
    """The official JAX NCSN++ uses flax's GroupNorm default, eps 1e-6."""
    _, model, v, x, _ = tiny_init["cifar10"]
    eps = _record(
        nn.GroupNorm,
        "epsilon",
        lambda: jax.eval_shape(lambda: model.apply(v, x, jnp.zeros((2,)), None, False)),
    )
    assert eps and {e for _, e, _ in eps} == {1e-6}


def test_ncsnpp_attention_qkv_init_scale_is_0_1(tiny_init):
    """q, k, v as the reference's NIN: variance_scaling(0.1, fan_avg, uniform) on (C, C)."""
    _, _, v, _, _ = tiny_init["cifar10"]
    attn = {k: p for k, p in v["params"].items() if k.startswith("AttnBlock")}
    assert len(attn) == 3  # after the 16x16 encoder block, in the middle, in the 16x16 decoder
    for block in attn.values():
        for i in range(3):
            w = np.asarray(block[f"Dense_{i}"]["kernel"])
            c = w.shape[0]
            limit = math.sqrt(3 * 0.1 / c)
            assert np.abs(w).max() <= limit
            np.testing.assert_allclose(w.std(), math.sqrt(0.1 / c), rtol=0.1)
            assert np.all(np.asarray(block[f"Dense_{i}"]["bias"]) == 0)
        # The output projection keeps init_scale 0 (default_init(0) = 1e-10 variance scale).
        assert np.abs(np.asarray(block["Dense_3"]["kernel"])).max() < 1e-4


@pytest.mark.parametrize("name", ["mlp", "unet_small", "ncsnpp", "adm", "ddpmpp"])
def test_every_network_has_the_call_contract(name):
    """__call__(x, noise_cond, labels=None, train=False, h=None)."""
    params = list(inspect.signature(MODELS[name].__call__).parameters.values())[1:6]
    assert [(p.name, p.default) for p in params] == [
        ("x", inspect.Parameter.empty),
        ("noise_cond", inspect.Parameter.empty),
        ("labels", None),
        ("train", False),
        ("h", None),
    ]


TINY_8X8 = {
    "ncsnpp": dict(
        name="ncsnpp", nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1
    ),
    "adm": dict(
        name="adm",
        model_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        num_head_channels=4,
        norm_groups=2,
        num_classes=3,
        dropout=0.1,
    ),
    "ddpmpp": dict(
        name="ddpmpp",
        model_channels=8,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(4,),
        dropout=0.1,
        num_classes=3,
    ),
}


def _tiny_8x8(name, **overrides):
    """A tiny network on (2, 8, 8, 3) with parameters ~ N(0, 0.1^2) (no init compile)."""
    model = build_model({**TINY_8X8[name], **overrides})
    labels = jnp.array([0, 2]) if model.num_classes else None
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    shapes = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0)}, x, jnp.zeros((2,)), labels, False)
    )
    rng = np.random.default_rng(0)
    v = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)
    return model, v, x, labels


# DDPM++ with h and in float32 too; NCSN++ and ADM in float64 (with dropout, along the
# probability-flow ODE) are in tests/test_sct.py.
@pytest.mark.parametrize("name", ["ddpmpp"])
def test_jvp_through_network_matches_float64_central_differences(name):
    """jax.jvp w.r.t. (x, noise_cond[, h]) vs a float64 central difference of the same network
    computed in float64 (step 1e-4; O(step^2) error ~1e-8). (train=False: dropout masks are
    drawn differently in float32 and float64.)

    Tolerances: the float64 jvp agrees to 1e-6 (relative norm); the float32 jvp (checked on
    DDPM++ only, to keep the test cheap) to 1e-3.
    """
    second = name == "ddpmpp"  # MeanFlow's u(z, t, h): one network also takes h
    model, v, x, labels = _tiny_8x8(name, second_time_input=second)
    c, h = jnp.array([0.3, -0.7]), jnp.array([0.2, 0.5])
    dx = jax.random.normal(jax.random.key(2), x.shape)
    dc, dh = jnp.array([1.0, -0.5]), jnp.ones(2)

    def run(m, params, x, c, h):
        return m.apply(params, x, c, labels, False, h if second else None)

    def jvp(m, params, dtype):
        primals = tuple(a.astype(dtype) for a in (x, c, h))
        tangents = tuple(a.astype(dtype) for a in (dx, dc, dh))
        return jax.jvp(lambda *p: run(m, params, *p), primals, tangents)

    with jax.enable_x64(True):
        m64 = build_model({**TINY_8X8[name], "second_time_input": second, "dtype": "float64"})
        v64 = jax.tree.map(lambda p: p.astype(jnp.float64), v)
        e = 1e-4

        def reference():
            def shifted(s):
                moved = [a.astype(jnp.float64) + s * d for a, d in ((x, dx), (c, dc), (h, dh))]
                return run(m64, v64, *moved)

            return jvp(m64, v64, jnp.float64), (shifted(e) - shifted(-e)) / (2 * e)

        (out64, tangent64), fd = jax.jit(reference)()
        assert out64.dtype == tangent64.dtype == fd.dtype == jnp.float64
        out64, tangent64, fd = (np.asarray(a) for a in (out64, tangent64, fd))

    def rel(a):
        return float(np.linalg.norm(np.asarray(a, np.float64) - fd) / np.linalg.norm(fd))

    assert np.linalg.norm(fd) > 1e-3  # the output really depends on the inputs
    assert rel(tangent64) < 1e-6, rel(tangent64)
    if name == "ddpmpp":
        out32, tangent32 = jax.jit(lambda: jvp(model, v, jnp.float32))()
        assert out32.dtype == tangent32.dtype == jnp.float32
        np.testing.assert_allclose(out32, out64, rtol=1e-3, atol=1e-4)
        assert rel(tangent32) < 1e-3, rel(tangent32)
