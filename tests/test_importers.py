"""cmjax-import: published checkpoints made by the REFERENCE code at tiny width (fixtures under
tests/fixtures/, each with the script and command that made it) import into cmjax networks whose
outputs on the pinned inputs equal the reference networks' outputs (golden values)."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmjax.config import TrainHParams
from cmjax.importers import CheckpointImportError, import_checkpoint, write_workdir
from cmjax.models import build_model

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent
TOL = 1e-4  # float32, outputs of order 1


def _net_out(config, params, golden, labels=None):
    model = build_model(config.model)
    out = model.apply(
        {"params": params},
        jnp.asarray(golden["x"]),
        jnp.asarray(golden["noise_cond"]),
        labels,
        False,
    )
    return np.asarray(out)


def _cli(capsys, module: str, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of an entry point called in-process, as its script does."""
    command = importlib.import_module(module).COMMAND
    code = command([command.prog, *args])
    out, err = capsys.readouterr()
    return code, out, err


# --- (1) consistency_models_cifar10 (flax msgpack, NCSN++) ------------------------------------

CM_CIFAR = FIXTURES / "cm_cifar10_ncsnpp"
CM_CIFAR_OPTS = dict(image_size=16, attn_resolutions=(8,))


@pytest.mark.parametrize("weights,key", [("ema", "out_ema"), ("online", "out_online")])
def test_cm_cifar10_matches_reference_network(weights, key):
    golden = np.load(CM_CIFAR / "golden.npz")
    config, params = import_checkpoint(
        CM_CIFAR / "checkpoint_1", "auto", weights=weights, **CM_CIFAR_OPTS
    )
    assert config.model.name == "ncsnpp" and config.objective.name == "ict"
    assert (config.model.nf, tuple(config.model.ch_mult), config.model.num_res_blocks) == (
        8,
        (1, 2),
        1,
    )
    assert config.model.fourier_scale == 16.0 and config.model.noise_cond_scale == 1.0
    out = _net_out(config, params, golden)
    assert np.abs(golden[key]).max() > 1.0  # random weights: a non-trivial output
    np.testing.assert_allclose(out, golden[key], rtol=0, atol=TOL)


def test_cm_cifar10_consistency_function_matches_reference_formula():
    """The written objective wraps F exactly as jcm's get_distiller_fn (pred_t = t_min)."""
    from cmjax.config.hparams import TrainHParams
    from cmjax.objectives.preconditioning import consistency_fn

    golden = np.load(CM_CIFAR / "golden.npz")
    config, params = import_checkpoint(CM_CIFAR / "checkpoint_1", **CM_CIFAR_OPTS)
    objective = TrainHParams.from_config(config).objective
    model = build_model(config.model)
    smin, _, sd, scale = objective._sigmas()  # what its sampler uses
    assert (smin, sd, scale) == (0.002, 0.5, 1.0)
    x, sigma = np.float64(golden["x"]), np.float64(golden["sigma"])
    f = consistency_fn(
        model.apply,
        params,
        jnp.asarray(golden["x"] * np.sqrt(sigma**2 + 0.25)[:, None, None, None], jnp.float32),
        jnp.asarray(sigma, jnp.float32),
        sigma_data=sd,
        sigma_min=smin,
        noise_cond_scale=scale,
    )
    # Reference: in_x = x / sqrt(t^2 + sd^2) = golden x; out = F (t - tmin) sd / sqrt(t^2 + sd^2)
    # + x sd^2 / ((t - tmin)^2 + sd^2), with tmin = 0.002, sd = 0.5.
    xin = x * np.sqrt(sigma**2 + 0.25)[:, None, None, None]
    b = (slice(None), None, None, None)
    want = (
        golden["out_ema"] * ((sigma - 0.002) * 0.5 / np.sqrt(sigma**2 + 0.25))[b]
        + xin * (0.25 / ((sigma - 0.002) ** 2 + 0.25))[b]
    )
    np.testing.assert_allclose(np.asarray(f), want, rtol=0, atol=TOL * 10)


def test_cm_cifar10_wrong_settings_name_the_parameter_and_the_implied_network():
    with pytest.raises(CheckpointImportError) as e:
        import_checkpoint(CM_CIFAR / "checkpoint_1", image_size=16, attn_resolutions=(16,))
    msg = str(e.value)
    assert "AttnBlockpp_" in msg and "nf=8" in msg and "ch_mult=(1, 2)" in msg
    assert "num_res_blocks=1" in msg and "attention_blocks_in_file=3" in msg


def test_import_cli_writes_a_workdir_that_cmjax_sample_reads(tmp_path, capsys):
    workdir = tmp_path / "cm"
    code, out, err = _cli(
        capsys,
        "cmjax.cli.import_checkpoint",
        f"--source={CM_CIFAR / 'checkpoint_1'}",
        f"--workdir={workdir}",
        "--image_size=16",
        "--attn_resolutions=8",
    )
    assert code == 0, err[-2000:]
    assert "model ncsnpp, objective ict" in out
    assert len(out.splitlines()) == 1 and not err  # no orbax logging around it

    from cmjax.workdir.runs import read_run

    run = read_run(workdir)
    config, state = run.config, run.state
    golden = np.load(CM_CIFAR / "golden.npz")
    assert int(state.step) == 0
    for tree in (state.params, *state.ema_params):
        out = _net_out(config, jax.device_get(tree), golden)
        np.testing.assert_allclose(out, golden["out_ema"], rtol=0, atol=TOL)
    opt_leaves = [np.asarray(v) for v in jax.tree.leaves(state.opt_state) if np.ndim(v) > 0]
    assert opt_leaves and all(not v.any() for v in opt_leaves)  # fresh Adam moments

    path = tmp_path / "s.npz"
    code, _, err = _cli(
        capsys,
        "cmjax.cli.sample",
        f"--workdir={workdir}",
        "--num_samples=8",
        "--batch_size=8",
        f"--out={path}",
    )
    assert code == 0, err[-2000:]
    assert np.load(path)["arr_0"].shape == (8, 16, 16, 3)

    with pytest.raises(CheckpointImportError, match="already holds checkpoints"):
        write_workdir(workdir, config, jax.device_get(state.params))


# --- (2) consistency_models ImageNet 64 (torch state dict, ADM) --------------------------------

CM_IMAGENET = FIXTURES / "cm_imagenet64_adm"


@pytest.mark.parametrize("tag,scale_shift", [("plain", False), ("scale_shift", True)])
def test_cm_imagenet64_matches_reference_network(tag, scale_shift):
    golden = np.load(CM_IMAGENET / "golden.npz")
    config, params = import_checkpoint(
        CM_IMAGENET / f"adm_{tag}.pt", image_size=16, num_head_channels=16
    )
    m = config.model
    assert (m.name, m.model_channels, tuple(m.channel_mult), m.num_res_blocks) == (
        "adm",
        32,
        (1, 1),
        1,
    )
    assert tuple(m.attn_resolutions) == (8,) and m.num_classes == 10
    assert m.use_scale_shift_norm == scale_shift and m.noise_cond_scale == 1000.0
    assert config.objective.name == "ict" and tuple(config.data.shape) == (16, 16, 3)
    out = _net_out(config, params, golden, jnp.asarray(golden["labels"]))
    assert np.abs(golden[f"out_{tag}"]).max() > 1.0
    np.testing.assert_allclose(out, golden[f"out_{tag}"], rtol=0, atol=TOL)


def test_the_cm_imagenet64_teacher_imports_as_an_edm_denoiser(tmp_path):
    """edm_imagenet64_ema.pt (CD's teacher) is an EDM denoiser: D = c_skip x + c_out F with
    EDM's scalings (no sigma_min offset) and c_noise = 1000 ln(sigma) / 4, so CD can read it."""
    golden = np.load(CM_IMAGENET / "golden.npz")
    teacher = tmp_path / "edm_imagenet64_ema.pt"
    shutil.copy(CM_IMAGENET / "adm_plain.pt", teacher)
    config, params = import_checkpoint(teacher, image_size=16, num_head_channels=16)
    assert config.objective.name == "edm" and config.model.noise_cond_scale == 1000.0
    hp = TrainHParams.from_config(config)
    model = build_model(config.model)
    sd = 0.5
    s = np.asarray(golden["sigma"], np.float64)[:, None, None, None]
    x = golden["x"] * np.sqrt(s**2 + sd**2)  # so that c_in x is the fixture's network input
    d = hp.objective.denoise(
        model.apply,
        params,
        jnp.asarray(x, jnp.float32),
        jnp.asarray(golden["sigma"]),
        jnp.asarray(golden["labels"]),
    )
    expected = sd**2 / (s**2 + sd**2) * x + s * sd / np.sqrt(s**2 + sd**2) * golden["out_plain"]
    np.testing.assert_allclose(np.asarray(d), expected, rtol=0, atol=TOL)
    config, _ = import_checkpoint(teacher, image_size=16, num_head_channels=16, objective="ict")
    assert config.objective.name == "ict"
    with pytest.raises(CheckpointImportError, match="use ict or edm"):
        import_checkpoint(teacher, image_size=16, num_head_channels=16, objective="cd")


def test_cm_imagenet64_unbuildable_settings_are_one_clear_error():
    with pytest.raises(CheckpointImportError, match="model_channels=32.*not divisible by 64"):
        import_checkpoint(CM_IMAGENET / "adm_plain.pt", image_size=16)  # 64-channel heads


def test_not_a_checkpoint_is_one_clear_error(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointImportError, match="x.pt is not a readable PyTorch"):
        import_checkpoint(bad)
    with pytest.raises(CheckpointImportError, match="not a flax msgpack checkpoint"):
        import_checkpoint(tmp_path / "x.pt", "cm_cifar10")


# --- loading never runs code from the file ----------------------------------------------------


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["plain", "zip"])
def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path, container):
    import pickle
    import zipfile

    from cmjax.importers.torch_pickle import UnsafePickleError, load

    marker = tmp_path / "pwned"
    payload = pickle.dumps({"ema": _RunsACommand(marker)}, protocol=4)
    path = tmp_path / "evil.pkl"
    if container == "zip":
        path = tmp_path / "evil.pt"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("evil/data.pkl", payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"refusing to load (posix|os)\.system"):
        import_checkpoint(path)  # detected as an EDM snapshot (plain) or a torch zip
    with pytest.raises(UnsafePickleError, match=r"refusing to load (posix|os)\.system"):
        load(path)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: unrestricted pickle runs it
    assert marker.exists()


# --- (3) EDM network snapshots (pickle, EDMPrecond around SongUNet / DhariwalUNet) -------------

EDM = FIXTURES / "edm"


@pytest.mark.parametrize("tag,name", [("ddpmpp", "ddpmpp"), ("adm", "adm")])
def test_edm_matches_reference_network_and_denoiser(tag, name):
    from cmjax.objectives.preconditioning import consistency_fn

    golden = np.load(EDM / "golden.npz")
    config, params = import_checkpoint(EDM / f"edm_{tag}.pkl")
    m = config.model
    assert m.name == name and m.noise_cond_scale == 1.0 and config.objective.name == "edm"
    assert tuple(config.data.shape) == (16, 16, 3)
    assert config.sampling.solver == "heun"
    if name == "ddpmpp":
        assert (m.model_channels, tuple(m.channel_mult), m.num_blocks, m.augment_dim) == (
            16,
            (1, 2),
            1,
            9,
        )
    else:
        assert (m.model_channels, m.num_head_channels, m.num_classes) == (32, 16, 10)
        assert m.use_scale_shift_norm and m.norm_groups == 0
    labels = jnp.asarray(golden["labels"]) if m.num_classes else None
    sigma = golden["sigma"]
    x_in = golden["x"] / np.sqrt(sigma**2 + 0.25)[:, None, None, None]
    out = _net_out(config, params, {"x": x_in, "noise_cond": golden["noise_cond"]}, labels)
    assert np.abs(golden[f"out_{tag}"]).max() > 1.0
    np.testing.assert_allclose(out, golden[f"out_{tag}"], rtol=0, atol=TOL)
    # EDMPrecond's D(x, sigma) == cmjax's EDM denoiser (consistency_fn with sigma_min = 0).
    denoised = consistency_fn(
        build_model(m).apply,
        params,
        jnp.asarray(golden["x"]),
        jnp.asarray(sigma),
        labels,
        sigma_data=config.objective.sigma_data,
        sigma_min=0.0,
        noise_cond_scale=m.noise_cond_scale,
    )
    np.testing.assert_allclose(np.asarray(denoised), golden[f"denoised_{tag}"], rtol=0, atol=TOL)


def test_edm_workdir_samples_with_heun(tmp_path):
    from cmjax.cli.sample import sampler_plan
    from cmjax.workdir.runs import read_run

    config, params = import_checkpoint(EDM / "edm_ddpmpp.pkl")
    write_workdir(tmp_path / "edm", config, params)
    run = read_run(tmp_path / "edm")
    state = run.state
    plan = sampler_plan(run.hp, 2)
    assert plan.method == "heun" and plan.nfe == 3
    objective = run.hp.objective
    x = objective.sample(
        state.apply_fn, state.ema_params[0], jax.random.key(0), (2, 16, 16, 3), plan
    )
    assert x.shape == (2, 16, 16, 3) and np.isfinite(np.asarray(x)).all()


def test_edm_baseline_preconditioners_are_refused_by_name(tmp_path, monkeypatch):
    """A VPPrecond snapshot (EDM's baseline-*.pkl) is one clear error, not an import."""
    import pickle
    import types

    fake = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # the name EDM's pickles reference
        raise AssertionError("never called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    fake._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", fake)

    class VPPrecond:
        def __reduce__(self):
            meta = dict(
                type="class",
                version=6,
                module_src="import os; os.system('x')",
                class_name="VPPrecond",
                state={"_modules": {}},
            )
            return (_reconstruct_persistent_obj, (meta,))

    path = tmp_path / "baseline.pkl"
    path.write_bytes(pickle.dumps({"ema": VPPrecond()}))
    with pytest.raises(CheckpointImportError, match="network is VPPrecond"):
        import_checkpoint(path)


@pytest.mark.parametrize("name", ["zip.pt", "legacy.pt"])
def test_torch_reader_rebuilds_strided_views_and_dtypes(name):
    from cmjax.importers.torch_pickle import load

    expected = np.load(FIXTURES / "torch_formats" / "expected.npz")
    sd = load(FIXTURES / "torch_formats" / name)
    assert list(sd) == ["w", "wt", "tail", "half", "steps", "scalar"]
    for key, value in sd.items():
        assert value.dtype == expected[key].dtype and value.shape == expected[key].shape, key
        np.testing.assert_array_equal(value, expected[key])
