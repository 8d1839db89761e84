"""Every entry point runs through the one CLI runner: ``--help`` lists its own flags and
exits 0; every mistake a user can make is one line on stderr, exit code 2, and no traceback
(it goes to error.log). The commands are called in-process (``COMMAND(argv)``), exactly as the
console scripts call them, so the suite pays no interpreter start-up per case."""

import importlib
import shutil

import numpy as np
import pytest

from cmjax.config import load_config
from cmjax.training.loop import train_and_evaluate

ENTRY_POINTS = {
    "cmjax-train": ("cmjax.cli.train", ["config", "workdir"]),
    "cmjax-sample": ("cmjax.cli.sample", ["workdir", "num_samples", "steps", "out", "ema_rate"]),
    "cmjax-fid": ("cmjax.cli.fid", ["samples", "reference", "inception", "save_stats"]),
    "cmjax-combine": ("cmjax.cli.combine", ["workdir", "out", "generations", "metric"]),
    "cmjax-import": ("cmjax.cli.import_checkpoint", ["source", "workdir", "format"]),
    "cmjax-prepare-imagenet": ("cmjax.cli.prepare_imagenet", ["src", "out", "workers"]),
    "cmjax-demo": ("cmjax.cli.demo", ["distribution", "steps"]),
    "cmjax-compile": ("cmjax.cli.compile", ["config", "topology", "per_chip_batch", "max_batch"]),
}


def command(prog):
    return importlib.import_module(ENTRY_POINTS[prog][0]).COMMAND


def test_pyproject_names_every_entry_point():
    import tomllib
    from pathlib import Path

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    scripts = scripts["project"]["scripts"]
    assert {k: v.split(":")[0] for k, v in scripts.items()} == {
        k: v[0] for k, v in ENTRY_POINTS.items()
    }
    for prog in ENTRY_POINTS:
        assert command(prog).prog == prog


@pytest.mark.parametrize("prog", sorted(ENTRY_POINTS))
def test_help_lists_the_commands_own_flags_and_exits_0(prog, capsys):
    assert command(prog)([prog, "--help"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: {prog} ") and not err
    for flag in [*ENTRY_POINTS[prog][1], "verbose"]:
        assert f"  --{flag}  (" in out, (flag, out)
    assert "--flagfile" not in out and "--xla_" not in out and "jax_" not in out  # not absl's
    assert len(out.splitlines()) < 80


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 20-step toy run with checkpoints at 10 and 20."""
    workdir = tmp_path_factory.mktemp("trained")
    config = load_config("toy2d")
    config.model.update(hidden=32, depth=2)
    config.training.update(total_steps=20, batch_size=64, log_every=10)
    config.checkpoint.update(every_steps=10)
    config.eval.every_steps = 0
    train_and_evaluate(config, workdir)
    return workdir


def _cases(trained, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    no_config = tmp_path / "no_config"
    shutil.copytree(trained, no_config)
    shutil.rmtree(no_config / "checkpoints" / "20" / "config")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "samples.npz", arr_0=rng.integers(0, 256, (4, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "one.npz", arr_0=rng.integers(0, 256, (1, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    np.savez(tmp_path / "bad_ref.npz", mean=np.zeros(3))
    (tmp_path / "inception.npz").write_bytes(b"not read before the inputs are checked")
    (tmp_path / "inception.pth").write_bytes(b"a torch file, not converted")
    (tmp_path / "bad.py").write_text("def get_config(:\n")
    (tmp_path / "broken.pkl").write_bytes(b"\x80\x04\x95\x10\x00\x00\x00garbage")
    train = ["cmjax-train", "--config=configs/toy2d.py", f"--workdir={tmp_path / 'w'}"]
    sample = ["cmjax-sample", f"--workdir={trained}"]
    fid = ["cmjax-fid", f"--samples={tmp_path / 'samples.npz'}"]
    inception = f"--inception={tmp_path / 'inception.npz'}"
    combine = ["cmjax-combine", f"--workdir={trained}", f"--out={tmp_path / 'lcsc'}"]
    return {
        "misspelled key": (
            [*train, "--config.optim.learnig_rate=0.1"],
            "unknown config key config.optim.learnig_rate",
        ),
        "unknown flag": ([*train, "--worksdir=x"], "unknown flag --worksdir; cmjax-train --help"),
        "missing config": (
            ["cmjax-train", "--config=configs/nope.py", f"--workdir={tmp_path}"],
            "config file configs/nope.py not found",
        ),
        "config syntax error": (
            ["cmjax-train", f"--config={tmp_path / 'bad.py'}", f"--workdir={tmp_path / 'w'}"],
            "bad.py",
        ),
        "no --workdir": (["cmjax-train", "--config=configs/toy2d.py"], "--workdir is required"),
        "batch 0": ([*train, "--config.training.batch_size=0"], "batch_size must be a positive"),
        "batch vs devices": (
            [*train, "--config.training.batch_size=12"],
            "batch_size=12 does not split over 8 devices",
        ),
        "zero width": (
            [*train, "--config.model.hidden=0"],
            "config.model (network 'mlp') cannot be built with these settings",
        ),
        "keep 0": ([*train, "--config.checkpoint.keep=0"], "config.checkpoint.keep must be >= 1"),
        "every_steps -1": (
            [*train, "--config.checkpoint.every_steps=-1"],
            "config.checkpoint.every_steps must be a positive integer",
        ),
        "workdir is a file": (
            ["cmjax-train", "--config=configs/toy2d.py", f"--workdir={a_file}"],
            "is a file; pass a directory",
        ),
        "unwritable workdir": (
            ["cmjax-train", "--config=configs/toy2d.py", "--workdir=/proc/cmjax_test/w"],
            "cannot create --workdir /proc/cmjax_test/w",
        ),
        "missing tfds": (
            [
                "cmjax-train",
                "--config=configs/cifar10_ict.py:tiny",
                f"--workdir={tmp_path / 'c'}",
                f"--config.data.data_dir={tmp_path / 'no_tfds'}",
            ],
            "tfds build cifar10",
        ),
        "num_samples 0": ([*sample, "--num_samples=0"], "--num_samples must be a positive"),
        "checkpoint without config": (
            ["cmjax-sample", f"--workdir={no_config}", "--num_samples=4"],
            "checkpoints/20 has no readable config",
        ),
        "ema rate it does not keep": (
            [*sample, "--num_samples=4", "--ema_rate=0.5"],
            "--ema_rate=0.5: this run keeps EMA rates [0.995]",
        ),
        "out not npz": ([*sample, f"--out={tmp_path / 'x.bin'}"], "must name an .npz file"),
        "out is a directory": ([*sample, f"--out={tmp_path}"], "must name an .npz file"),
        "bad sampler steps": ([*sample, "--steps=5"], "takes 1 or 2 steps"),
        "fid without inception": (fid, "--inception is required for FID"),
        "missing reference": (
            [*fid, inception, f"--reference={tmp_path / 'nope.npz'}"],
            "--reference=",
        ),
        "malformed reference": (
            [*fid, inception, f"--reference={tmp_path / 'bad_ref.npz'}"],
            "holds neither statistics ('mu' and 'sigma') nor images ('arr_0'); found ['mean']",
        ),
        "one sample": (
            ["cmjax-fid", f"--samples={tmp_path / 'one.npz'}", inception],
            "FID statistics need >= 2",
        ),
        "no arr_0": (
            ["cmjax-fid", f"--samples={tmp_path / 'other.npz'}"],
            "has no 'arr_0' image array (found ['x'])",
        ),
        "inception not npz": (
            [*fid, f"--inception={tmp_path / 'inception.pth'}"],
            "is not a readable .npz",
        ),
        "combine steps abc": ([*combine, "--steps=abc"], "--steps=abc must be checkpoint steps"),
        "combine generations 0": ([*combine, "--generations=0"], "--generations must be >= 1"),
        "combine population 0": ([*combine, "--population=0"], "--population must be >= 2"),
        "combine num_samples 0": ([*combine, "--num_samples=0"], "--num_samples must be >= 1"),
        "combine one candidate": ([*combine, "--steps=20"], "LCSC combines two or more"),
        "combine out exists": (
            ["cmjax-combine", f"--workdir={trained}", f"--out={trained}"],
            "already holds checkpoints",
        ),
        "import missing source": (
            ["cmjax-import", f"--source={tmp_path / 'nope.pkl'}", f"--workdir={tmp_path / 'i'}"],
            "is not a file",
        ),
        "import malformed pickle": (
            ["cmjax-import", f"--source={tmp_path / 'broken.pkl'}", f"--workdir={tmp_path / 'i'}"],
            "is not a readable PyTorch checkpoint",
        ),
        "import no flags": (["cmjax-import"], "--source is required"),
        "prepare missing src": (
            ["cmjax-prepare-imagenet", f"--src={tmp_path / 'nope'}", f"--out={tmp_path / 'p'}"],
            "does not exist",
        ),
        "demo steps 0": (["cmjax-demo", "--steps=0"], "--steps must be a positive integer"),
    }


def test_every_user_mistake_is_one_line_exit_2(trained, tmp_path, capsys, monkeypatch):
    """Every case at once (one module fixture, one process); each case its own assertion."""
    monkeypatch.chdir(importlib.import_module("pathlib").Path(__file__).parents[1])
    failures = []
    for name, (argv, text) in _cases(trained, tmp_path).items():
        code = command(argv[0])(argv)
        out, err = capsys.readouterr()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        ok = (
            code == 2
            and len(lines) == 1
            and lines[0].startswith(f"{argv[0]}: error: ")
            and text in lines[0]
            and "Traceback" not in out + err
            and " INFO " not in out
        )
        if not ok:
            failures.append((name, code, err[-600:]))
    assert not failures, failures
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())
    assert not (tmp_path / "lcsc").exists()  # refused before the search, nothing written
