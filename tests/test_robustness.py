"""Bad inputs and mishaps (issue 12): each ends in one clear line, never in lost or silently
wrong work. Two runs on one workdir, incompatible resumes, corrupt checkpoints, diverged
runs, mis-shaped or non-finite data, CLI errors, the README's custom-data example, Ctrl-C."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from cmjax import parallel
from cmjax.checkpoint import Checkpointer, CheckpointError, state_digest
from cmjax.config_loading import load_config
from cmjax.train import NonFiniteError, train_and_evaluate
from cmjax.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLockedError

ROOT = Path(__file__).resolve().parents[1]
TOY_FLAGS = [
    "--config.model.hidden=32",
    "--config.model.depth=2",
    "--config.training.batch_size=64",
    "--config.eval.every_steps=0",
]


def _toy_config(total_steps=20, every=10):
    config = load_config("toy2d")
    config.model.update(hidden=32, depth=2)
    config.training.update(total_steps=total_steps, batch_size=64, log_every=10)
    config.checkpoint.update(every_steps=every)
    config.eval.every_steps = 0
    return config


def _cli(module, *args, env=None):
    """``python -m module args``: (returncode, stdout, stderr)."""
    full_env = dict(os.environ, **(env or {}))
    r = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return r.returncode, r.stdout, r.stderr


def _one_error_line(stderr: str) -> str:
    """The single line a CLI printed for a user error (third-party noise lines excluded)."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("cmjax-")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy run of 20 steps with checkpoints every 10: the pristine workdir to copy."""
    workdir = tmp_path_factory.mktemp("trained")
    train_and_evaluate(_toy_config(), workdir)
    return workdir


def _copy(trained, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


# 1. One run per workdir ----------------------------------------------------------------------


def test_second_run_on_a_locked_workdir_refuses_naming_the_holder(tmp_path):
    workdir = tmp_path / "run"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cmjax.main",
            "--config=configs/toy2d.py",
            f"--workdir={workdir}",
            *TOY_FLAGS,
            "--config.training.total_steps=100000",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lock = workdir / LOCK_NAME
        deadline = time.time() + 120
        while not (lock.is_file() and lock.read_text()):
            assert first.poll() is None and time.time() < deadline, "first run did not lock"
            time.sleep(0.1)
        assert json.loads(lock.read_text())["pid"] == first.pid
        rc, _, err = _cli(
            "cmjax.main", "--config=configs/toy2d.py", f"--workdir={workdir}", *TOY_FLAGS
        )
        line = _one_error_line(err)
        assert rc == 2
        assert f"pid {first.pid}" in line and "in use" in line and "--workdir" in line
        assert first.poll() is None  # the first run is untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The SIGKILLed holder left its record behind; the lock itself died with it.
    assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == first.pid
    with WorkdirLock(workdir):
        assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
            WorkdirLock(workdir).acquire()  # also within one process
    assert (workdir / LOCK_NAME).read_text() == ""  # a clean release names no holder


# 2. Incompatible config on resume ------------------------------------------------------------


def test_incompatible_resume_refuses_in_one_line_and_changes_nothing(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    config = _toy_config(total_steps=30)
    config.model.hidden = 48
    with pytest.raises(CheckpointError) as info:
        train_and_evaluate(config, workdir)
    message = str(info.value)
    assert "\n" not in message
    assert "model.hidden: 32 -> 48" in message
    assert "config.json" in message and "new --workdir" in message
    assert "delete" not in message.lower()
    after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    assert after == before  # config.json and every checkpoint byte-identical (lock included)


# 3. Corrupt checkpoints ----------------------------------------------------------------------


def _flip_three_bytes_in_each_data_file(step_dir: Path) -> None:
    """Three bytes inside every OCDBT data file of a checkpoint's state."""
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            data = bytearray(path.read_bytes())
            for offset in range(len(data) // 5, len(data) // 5 + 21, 7):
                data[offset] ^= 0x5A
            path.write_bytes(bytes(data))


def _swap_state(workdir: Path, step: int, other: int) -> None:
    """Valid bytes, wrong content: checkpoint ``step`` gets the state files of ``other``
    (what a bad copy or a silent disk error looks like; orbax's own checks pass)."""
    target = workdir / "checkpoints" / str(step) / "state"
    shutil.rmtree(target)
    shutil.copytree(workdir / "checkpoints" / str(other) / "state", target)


def test_state_digest_sees_one_word_and_not_the_mesh():
    config = _toy_config()
    states = [
        parallel.create_sharded_train_state(
            config,
            parallel.abstract_train_state(config, parallel.make_mesh({"fsdp": f}, devices)),
            jax.random.key(0),
        )
        for f, devices in ((1, jax.devices()[:1]), (8, jax.devices()))
    ]
    reference = state_digest(states[0])
    assert state_digest(states[1]) == reference  # 1 device == 8-way FSDP shards
    kernel = np.asarray(states[0].params["Dense_1"]["kernel"]).copy()
    kernel.view(np.uint32)[3, 5] ^= 1 << 7  # one bit of one word
    changed = states[0].replace(params={**states[0].params, "Dense_1": {"kernel": kernel}})
    changed = changed.replace(
        params={**changed.params, "Dense_1": {**states[0].params["Dense_1"], "kernel": kernel}}
    )
    diff = state_digest(changed)
    bad = [k for k in reference if reference[k] != diff[k]]
    assert bad == ["params.Dense_1.kernel"]
    assert all(a != b for a, b in zip(reference[bad[0]], diff[bad[0]], strict=True))


def test_corrupt_newest_checkpoint_falls_back_to_the_newest_intact(trained, tmp_path, caplog):
    workdir = _copy(trained, tmp_path)
    config = _toy_config(total_steps=20)
    abstract = parallel.abstract_train_state(config, parallel.make_mesh({}))
    _swap_state(workdir, 20, 10)
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        with pytest.raises(CheckpointError, match="checkpoints/20 is corrupt.*digest"):
            ckpt.restore(abstract, 20)
    finally:
        ckpt.close()
    with caplog.at_level("WARNING", logger="cmjax"):
        state = train_and_evaluate(config, workdir)  # resumes at 10, trains 10 -> 20 again
    assert int(state.step) == 20
    (warning,) = [r.getMessage() for r in caplog.records if "moved it" in r.getMessage()]
    assert "resuming from step 10" in warning and "\n" not in warning
    aside = list((workdir / "corrupt_checkpoints").iterdir())
    assert [p.name.split("-")[0] for p in aside] == ["20"]  # kept, not deleted
    # The re-trained step 20 equals the original (exact resume), so the fallback lost nothing.
    original = Checkpointer(trained, read_only=True)
    try:
        reference = original.restore(parallel.abstract_train_state(config, parallel.make_mesh({})))
    finally:
        original.close()
    assert state_digest(state) == state_digest(reference)


def test_no_intact_checkpoint_stops_in_one_line(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    _flip_three_bytes_in_each_data_file(workdir / "checkpoints" / "20")
    for data in (workdir / "checkpoints" / "10" / "state").rglob("*"):
        if data.is_file() and data.parent.name == "d":
            data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # truncated
    with pytest.raises(CheckpointError) as info:
        train_and_evaluate(_toy_config(total_steps=30), workdir)
    message = str(info.value)
    assert "no intact checkpoint" in message and "\n" not in message
    assert "checkpoints/20 " in message and "checkpoints/10 " in message, message
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["10", "20"]


# 4. No automatic step-1 checkpoint; a truthful divergence message ---------------------------


def test_fresh_run_saves_only_periodic_steps(trained):
    ckpt = Checkpointer(trained, read_only=True)
    try:
        assert ckpt.all_steps() == [20, 10]  # no step 1
    finally:
        ckpt.close()


def test_divergence_names_the_step_and_how_to_go_on(trained, tmp_path):
    fresh = tmp_path / "fresh"
    config = _toy_config(total_steps=20)
    config.optim.learning_rate = 1e9
    with pytest.raises(NonFiniteError) as info:
        train_and_evaluate(config, fresh)
    assert "no checkpoint exists yet" in str(info.value) and "afresh" in str(info.value)
    assert not any((fresh / "checkpoints").iterdir())
    workdir = _copy(trained, tmp_path)
    config.training.total_steps = 40
    with pytest.raises(NonFiniteError) as info:
        train_and_evaluate(config, workdir)
    message = str(info.value)
    assert "at step 21" in message or "at step 22" in message
    assert "newest checkpoint, step 20" in message and "may already be diverging" in message
    assert "(10)" in message and "move the newer step folders" in message
    assert "new --workdir" in message
