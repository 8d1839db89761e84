"""LPIPS-VGG against the reference (the lpips package), on seeded weights.

Golden values: tests/fixtures/lpips/make_fixture.py ran the lpips package 0.1.4 (torch 2.14.1,
torchvision 0.29.1) once, on the seeded VGG16 of tests/fixtures/lpips/seeded.py and the random
linear heads it saved as lin.pth, with max pooling (lpips) and average pooling (piq's
``replace_pooling=True``), on 32 x 32 images and after a bilinear resize to 224 (CD's use).
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmjax.config import TrainHParams, load_config
from cmjax.core import parallel
from cmjax.errors import ConfigError, WeightsError
from cmjax.importers.torch_pickle import load
from cmjax.models.lpips import LPIPS, load_lpips_params, lpips_params
from cmjax.objectives import CD
from cmjax.objectives.base import Frozen, Nets
from cmjax.workdir.frozen import load_one
from cmjax.workdir.weights import file_network

FIXTURES = Path(__file__).parent / "fixtures" / "lpips"
sys.path.insert(0, str(FIXTURES))
from seeded import vgg16_features  # noqa: E402

GOLDEN = np.load(FIXTURES / "golden.npz")


@pytest.fixture(scope="module")
def params():
    lin = {k: np.asarray(v) for k, v in load(FIXTURES / "lin.pth").items()}
    return lpips_params(vgg16_features(), lin)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_lpips_equals_the_reference_on_seeded_weights(params, pool):
    out = LPIPS(pool=pool).apply({"params": params}, GOLDEN["x"], GOLDEN["y"])
    np.testing.assert_allclose(np.asarray(out), GOLDEN[f"d_{pool}"], rtol=2e-4)
    # The two poolings are different metrics (25% apart here): the switch is not cosmetic.
    assert abs(float(GOLDEN["d_avg"][0]) / float(GOLDEN["d_max"][0]) - 1) > 0.1


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_cds_lpips_distance_resizes_to_224_as_the_reference(params, pool):
    """CD's distance: both images bilinearly resized to 224 x 224, then LPIPS; equal to torch's
    F.interpolate + lpips (the PyTorch CD code's path)."""
    cd = CD(teacher="x", distance="lpips", lpips_pool=pool)
    nets = Nets({}, {}, {"lpips": Frozen(file_network("lpips").definition(), params)})
    out = cd.distance_fn(nets)(jnp.asarray(GOLDEN["x"]), jnp.asarray(GOLDEN["y"]))
    np.testing.assert_allclose(np.asarray(out), GOLDEN[f"d_{pool}_224"], rtol=2e-4)


def test_grey_images_are_compared_on_three_equal_channels(params):
    cd = CD(teacher="x", distance="lpips", lpips_size=32)
    nets = Nets({}, {}, {"lpips": Frozen(file_network("lpips").definition(), params)})
    x, y = (jnp.asarray(GOLDEN[k][..., :1]) for k in ("x", "y"))
    grey = cd.distance_fn(nets)(x, y)
    rgb = LPIPS().apply({"params": params}, *(jnp.repeat(v, 3, axis=-1) for v in (x, y)))
    np.testing.assert_allclose(np.asarray(grey), np.asarray(rgb), rtol=1e-6)


def test_the_weight_files_are_read_into_the_flax_layout():
    """vgg_const.pth: every VGG tensor a stride-0 view of one number (conv i: weight
    0.01 (i + 1), bias -0.5 (i + 1)); lin.pth as saved by the reference module."""
    p = load_lpips_params(FIXTURES / "vgg_const.pth", FIXTURES / "lin.pth")
    kernels = [p[f"conv{b}_{j}"] for b, n in enumerate((2, 2, 3, 3, 3)) for j in range(n)]
    assert len(kernels) == 13
    for i, layer in enumerate(kernels):
        assert layer["kernel"].shape[:3] == (3, 3, 3 if i == 0 else kernels[i - 1]["bias"].shape[0])
        np.testing.assert_array_equal(layer["kernel"], np.float32(0.01 * (i + 1)))
        np.testing.assert_array_equal(layer["bias"], np.float32(-0.5 * (i + 1)))
    lin = load(FIXTURES / "lin.pth")
    for k, width in enumerate((64, 128, 256, 512, 512)):
        w = np.asarray(lin[f"lin{k}.model.1.weight"])  # (1, C, 1, 1)
        assert p[f"lin{k}"]["kernel"].shape == (1, 1, width, 1)
        np.testing.assert_array_equal(p[f"lin{k}"]["kernel"][0, 0, :, 0], w[0, :, 0, 0])


def test_missing_or_wrong_weight_files_are_one_line_errors(tmp_path):
    with pytest.raises(WeightsError, match="VGG16 weights .* not found; pass the path of"):
        load_lpips_params(tmp_path / "nope.pth", FIXTURES / "lin.pth")
    with pytest.raises(WeightsError, match="has no tensor 'features.0.weight'"):
        load_lpips_params(FIXTURES / "lin.pth", FIXTURES / "lin.pth")
    with pytest.raises(WeightsError, match="has no tensor 'lin0.model.1.weight'"):
        load_lpips_params(FIXTURES / "vgg_const.pth", FIXTURES / "vgg_const.pth")


def test_the_loop_loads_lpips_as_a_frozen_network_and_records_its_files():
    """``distance="lpips"`` declares a frozen network read from the two files (not a run);
    the checkpoint's record names the loader and the files; an unset file is one line."""
    config = load_config("default:tiny,cd")
    vgg, lin = str(FIXTURES / "vgg_const.pth"), str(FIXTURES / "lin.pth")
    config.objective.update(distance="lpips", lpips_vgg=vgg, lpips_lin=lin, lpips_size=32)
    hp = TrainHParams.from_config(config)
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    loaded = load_one(hp, "lpips", hp.objective.frozen_networks()["lpips"], mesh)
    expected = load_lpips_params(vgg, lin)
    for name in ("conv4_2", "lin3"):
        for key, value in expected[name].items():
            np.testing.assert_array_equal(np.asarray(loaded.params[name][key]), value)
    assert loaded.record == {"loader": "lpips", "files": [vgg, lin]}
    config.objective.lpips_lin = ""
    hp = TrainHParams.from_config(config)
    with pytest.raises(ConfigError, match="^config.objective.lpips_lin is not set"):
        load_one(hp, "lpips", hp.objective.frozen_networks()["lpips"], mesh)


def test_the_lpips_gradient_is_finite_where_every_feature_is_zero():
    """vgg_const.pth's biases kill every channel after a few layers: the distance is 0 and its
    gradient must be 0, not NaN (sqrt's derivative at 0)."""
    p = load_lpips_params(FIXTURES / "vgg_const.pth", FIXTURES / "lin.pth")
    x, y = (jnp.asarray(GOLDEN[k][:1, :16, :16]) for k in ("x", "y"))
    g = jax.jit(jax.grad(lambda a: jnp.sum(LPIPS().apply({"params": p}, a, y))))(x)
    assert np.isfinite(np.asarray(g)).all()


def test_a_resume_rebuilds_the_lpips_network_from_its_record_alone(params):
    """What a checkpoint keeps of a file-loaded network is its record; the definition a
    restore builds from it (no file read) has exactly the layout of the loaded parameters,
    so the generic frozen-tree restore of the conformance harness applies to it."""
    from cmjax.workdir.runs import definitions_from_records

    record = {"loader": "lpips", "files": ["/nowhere/vgg.pth", "/nowhere/lin.pth"]}
    (definition,) = definitions_from_records({"lpips": record}).values()
    assert isinstance(definition.model, LPIPS)
    abstract = definition.abstract_params()
    assert jax.tree.structure(abstract) == jax.tree.structure(params)
    for a, p in zip(jax.tree.leaves(abstract), jax.tree.leaves(params), strict=True):
        assert a.shape == p.shape
