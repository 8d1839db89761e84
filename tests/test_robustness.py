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
from PIL import Image

from cmjax.config.hparams import MeshHParams
from cmjax.config.loading import load_config
from cmjax.core import parallel
from cmjax.data import DataError, DataHParams, make_source
from cmjax.errors import NonFiniteError
from cmjax.training.loop import train_and_evaluate
from cmjax.workdir.checkpoint import Checkpointer, CheckpointError, state_digest
from cmjax.workdir.lock import LOCK_NAME, WorkdirLock, WorkdirLockedError
from cmjax.workdir.runs import read_run


def data_spec(*args, **kw):
    """``hp.data`` from config.data keys."""
    return DataHParams(**dict(*args, **kw))


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
            "cmjax.cli.train",
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
            "cmjax.cli.train", "--config=configs/toy2d.py", f"--workdir={workdir}", *TOY_FLAGS
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
            parallel.abstract_train_state(config, parallel.make_mesh(MeshHParams(fsdp=f), devices)),
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
    abstract = parallel.abstract_train_state(config, parallel.make_mesh())
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
        reference = original.restore(parallel.abstract_train_state(config, parallel.make_mesh()))
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


# 5. Mis-sized images are refused unless resizing is asked for --------------------------------


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.mark.parametrize("size", [(16, 16), (8, 12)])
def test_npz_of_another_size_is_refused_unless_resize(tmp_path, size, caplog):
    path = tmp_path / "imgs.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (6, *size, 3), dtype=np.uint8))
    data = dict(name="npz", path=str(path), shape=(8, 8, 3), num_classes=0)
    with pytest.raises(DataError) as info:
        make_source(data_spec(data))
    message = str(info.value)
    assert "imgs.npz" in message and f"{size[0]}x{size[1]}x3" in message and "8x8x3" in message
    assert "config.data.resize=True" in message and "\n" not in message
    with caplog.at_level("WARNING", logger="cmjax"):
        src = make_source(data_spec(data, resize=True))
    assert src.x.shape == (6, 8, 8, 3)
    assert any(f"from {size[0]}x{size[1]} to 8x8" in r.getMessage() for r in caplog.records)


def test_image_folder_of_mixed_sizes_names_the_odd_file(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for i in range(3):
        _png(tmp_path / f"{i}.png", rng.integers(0, 256, (8, 8, 3), np.uint8))
    _png(tmp_path / "3.png", rng.integers(0, 256, (16, 16, 3), np.uint8))
    data = dict(name="image_folder", path=str(tmp_path), shape=(8, 8, 3), num_classes=0)
    with pytest.raises(DataError, match=r"3\.png: images are 16x16x3 but config\.data\.shape"):
        make_source(data_spec(data))
    with caplog.at_level("WARNING", logger="cmjax"):
        src = make_source(data_spec(data, resize=True))
    np.testing.assert_array_equal(src.x[0], np.asarray(Image.open(tmp_path / "0.png")))
    assert any("resized 1 of 4 images" in r.getMessage() for r in caplog.records)


def test_digits_at_another_shape_need_resize():
    with pytest.raises(DataError, match="digits: images are 8x8x1"):
        make_source(data_spec(name="digits", shape=(16, 16, 1), num_classes=0))
    assert make_source(data_spec(name="digits", shape=(16, 16, 1), resize=True)).x.shape[1:] == (
        16,
        16,
        1,
    )


# 6. Data is validated when loaded ------------------------------------------------------------


def test_non_finite_vectors_name_file_and_index(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 2))
    x[17, 1] = np.nan
    x[30, 0] = np.inf
    np.savez(tmp_path / "pts.npz", x=x)
    with pytest.raises(DataError) as info:
        make_source(data_spec(name="npz", path=str(tmp_path / "pts.npz"), shape=(2,)))
    message = str(info.value)
    assert "pts.npz" in message and "example 17" in message and "(17, 1)" in message
    assert "2 example(s)" in message
    big = np.full((3, 2), 1e300)  # finite float64, inf as float32
    np.savez(tmp_path / "big.npz", x=big)
    with pytest.raises(DataError, match=r"big\.npz 'x' \(as float32\): example 0"):
        make_source(data_spec(name="npz", path=str(tmp_path / "big.npz"), shape=(2,)))


def test_truncated_png_and_npz_are_named(tmp_path):
    _png(tmp_path / "imgs" / "good.png", np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "imgs" / "broken.png", np.zeros((8, 8, 3), np.uint8))
    broken = tmp_path / "imgs" / "broken.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DataError, match=r"broken\.png cannot be read as an image"):
        make_source(data_spec(name="image_folder", path=str(tmp_path / "imgs"), shape=(8, 8, 3)))
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)))
    (tmp_path / "d.npz").write_bytes((tmp_path / "d.npz").read_bytes()[:100])
    with pytest.raises(DataError, match=r"d\.npz cannot be read"):
        make_source(data_spec(name="npz", path=str(tmp_path / "d.npz"), shape=(2,)))


# 8. Every shipped config takes every data key; the README's custom-data example runs ---------


def test_every_shipped_config_has_every_data_key():
    import dataclasses

    wanted = {f.name for f in dataclasses.fields(DataHParams)}
    for spec in ("default", "default:tiny", "toy2d", "cifar10_ict", "imagenet64_ict:tiny"):
        missing = wanted - set(load_config(spec).data)
        assert not missing, (spec, missing)


def test_readme_custom_data_example_runs_as_written_and_reports_progress(
    tmp_path, capsys, monkeypatch
):
    """Also issue 17: set-up steps are logged as they happen, and step 1 right after compiling.
    The command runs in-process, as its console script runs it."""
    import shlex

    from cmjax.cli import train

    readme = (ROOT / "README.md").read_text()
    (line,) = [ln for ln in readme.splitlines() if "--config.data.name=npz" in ln]
    args = shlex.split(line, comments=True)
    assert args[0] == "cmjax-train"
    path = next(a for a in args if a.startswith("--config.data.path=")).split("=", 1)[1]
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / path, x=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))
    budget = [  # as written, plus a test-sized budget
        "--config.training.total_steps=2",
        "--config.training.batch_size=8",
        "--config.training.log_every=100",
        "--config.checkpoint.every_steps=2",
        "--config.training.sample_every=0",
        "--config.model.channels=8",
    ]
    monkeypatch.chdir(tmp_path)
    code = train.COMMAND(args + budget)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    milestones = [
        "setting up the run",
        "devices: ",
        "data: my_images.npz, 40 examples of shape (32, 32, 3)",
        "initializing a new state",
        "compiling the train step",
        "compiled in",
        "step 1/2",  # not only at log_every
        "step 2/2",
    ]
    positions = [out.find(m) for m in milestones]
    assert -1 not in positions and positions == sorted(positions), out


# 7. Every user error: one line on stderr, exit code 2, the traceback in a log file ----------


def test_cli_wrapper_reports_one_line_and_logs_the_traceback(tmp_path, capsys):
    import errno

    from absl import flags

    from cmjax.cli.runner import Command
    from cmjax.errors import UserError

    def failing(error):
        def define(fv, argv):
            flags.DEFINE_string("workdir", str(tmp_path), "where error.log goes", flag_values=fv)

        def main(fv):
            raise error

        return Command("cmjax-t", "a test command", define, main, workdir_flag="workdir")

    cases = [
        (UserError("config.x is wrong; do y"), 2, "cmjax-t: error: config.x is wrong; do y"),
        (OSError(errno.ENOSPC, "No space left on device", "/w/ckpt"), 2, "No space left"),
        (RuntimeError("bug\nwith two lines"), 1, "internal error (RuntimeError: bug with two"),
        (KeyboardInterrupt(), 130, "cmjax-t: interrupted"),
    ]
    for error, code, text in cases:
        assert failing(error)(["cmjax-t"]) == code
        (line,) = capsys.readouterr().err.splitlines()
        assert text in line
    log = (tmp_path / "error.log").read_text()
    assert log.count("Traceback") == 3 and "ENOSPC" not in log and "No space left" in log
    assert failing(UserError("x"))(["cmjax-t", "--verbose"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1] == "cmjax-t: error: x"


def _start(module, *args, cwd=ROOT):
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# 9. Ctrl-C saves the current step and exits cleanly; a second one aborts at once -------------


def test_ctrl_c_saves_the_current_step_and_exits_cleanly(tmp_path):
    from cmjax.workdir.checkpoint import latest_step

    proc = _start(
        "cmjax.cli.train",
        "--config=configs/toy2d.py",
        *TOY_FLAGS,
        "--config.training.total_steps=100000",
        "--config.training.log_every=100000",
        "--config.checkpoint.every_steps=100000",
        f"--workdir={tmp_path}",
    )
    while "step 1/" not in (line := proc.stdout.readline()):  # logged right after compiling
        assert line, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    saved = int(out.split("Ctrl-C: saved step ")[1].split(",")[0])
    assert latest_step(tmp_path) == saved >= 1


def test_second_ctrl_c_aborts_at_once():
    from cmjax.training.preemption import PreemptionWatcher

    found = signal.getsignal(signal.SIGINT)
    watcher = PreemptionWatcher()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert watcher.requested() and watcher.interrupted
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        watcher.close()
    # The watcher restores the handler it found (Python's default, or SIG_IGN when the
    # suite runs as a background job), not a fixed one.
    assert signal.getsignal(signal.SIGINT) is found


# 10. What issue 27 found: nothing restored unverified, no silent no-op, no partial files ----


def test_a_checkpoint_without_its_digest_is_not_trusted(trained, tmp_path, caplog):
    """The newest checkpoint's digest deleted and its arrays replaced by valid but wrong ones
    (orbax's own checks pass): it cannot be verified, so it is set aside like a corrupt one
    and the run resumes from step 10 (before: restored at step 20 without a word)."""
    workdir = _copy(trained, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "20" / "digest")
    _swap_state(workdir, 20, 10)
    with caplog.at_level("WARNING", logger="cmjax"):
        state = train_and_evaluate(_toy_config(total_steps=20), workdir)
    (warning,) = [r.getMessage() for r in caplog.records if "moved it" in r.getMessage()]
    assert "has no digest" in warning and "resuming from step 10" in warning
    assert state_digest(state) == state_digest(read_run(trained, 20).state)


def test_a_deleted_array_metadata_file_is_a_damaged_checkpoint(trained, tmp_path, caplog):
    workdir = _copy(trained, tmp_path)
    (workdir / "checkpoints" / "20" / "state" / "_METADATA").unlink()
    with caplog.at_level("WARNING", logger="cmjax"):
        state = train_and_evaluate(_toy_config(total_steps=20), workdir)
    (warning,) = [r.getMessage() for r in caplog.records if "moved it" in r.getMessage()]
    assert "_METADATA" in warning and "resuming from step 10" in warning
    assert "model code changed" not in warning
    assert state_digest(state) == state_digest(read_run(trained, 20).state)


def test_resuming_with_another_objective_is_refused_and_changes_nothing(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    config = _toy_config(total_steps=30)
    config.objective = load_config("toy2d:edm").objective
    config.sampling = load_config("toy2d:edm").sampling
    with pytest.raises(CheckpointError) as info:
        train_and_evaluate(config, workdir)
    message = str(info.value)
    assert "trained with objective 'ict', not 'edm'" in message and "\n" not in message
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_resuming_past_total_steps_says_there_is_nothing_to_do(trained, tmp_path, caplog):
    workdir = _copy(trained, tmp_path)
    with caplog.at_level("WARNING", logger="cmjax"):
        state = train_and_evaluate(_toy_config(total_steps=15), workdir)
    assert int(state.step) == 20
    (line,) = [r.getMessage() for r in caplog.records if "nothing to train" in r.getMessage()]
    assert "already at step 20" in line and "total_steps is 15" in line


def test_a_full_disk_during_a_save_is_one_line_naming_what_is_intact(tmp_path, monkeypatch):
    import errno

    import orbax.checkpoint as ocp

    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 20:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.directory))
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(CheckpointError) as info:
        train_and_evaluate(_toy_config(total_steps=30), tmp_path)
    message = str(info.value)
    assert "\n" not in message and "no space left on the device" in message
    assert "checkpoints/20" in message and "intact (steps 10)" in message
    assert "rerun the same command to resume from step 10" in message
    monkeypatch.undo()
    state = train_and_evaluate(_toy_config(total_steps=30), tmp_path)  # space freed: resumes
    assert int(state.step) == 30


def test_a_truncated_array_file_names_the_file_and_the_reason(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    for data in (workdir / "checkpoints" / "20" / "state").rglob("*"):
        if data.is_file() and data.parent.name == "d":
            data.write_bytes(data.read_bytes()[:10])
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        with pytest.raises(CheckpointError) as info:
            ckpt.restore(parallel.abstract_train_state(_toy_config(), parallel.make_mesh()), 20)
    finally:
        ckpt.close()
    message = str(info.value)
    assert "checkpoints/20 " in message and "\n" not in message
    assert "truncated or corrupt" in message or "unreadable metadata" in message
    assert "<bound method" not in message and " at 0x" not in message


def test_a_killed_sample_leaves_no_file_at_the_output_path(trained, tmp_path, monkeypatch):
    from cmjax.cli import sample as sample_cli

    def dies_while_writing(f, **arrays):
        f.write(b"PK\x03\x04 the first bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", dies_while_writing)
    out = tmp_path / "s.npz"
    argv = ["cmjax-sample", f"--workdir={trained}", "--num_samples=4", f"--out={out}"]
    assert sample_cli.COMMAND(argv) == 130
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_a_killed_combination_is_never_read_as_a_finished_one(trained, tmp_path, monkeypatch):
    from cmjax import lcsc
    from cmjax.cli import sample as sample_cli
    from cmjax.lcsc import stack

    run = lcsc.load_stacked(trained, include_ema=True)
    alpha = np.eye(run.num, dtype=np.float32)[0]
    real = stack.write_text_atomic

    def killed_before_lcsc_json(path, text):
        if path.name == "lcsc.json":
            raise KeyboardInterrupt
        return real(path, text)

    monkeypatch.setattr(stack, "write_text_atomic", killed_before_lcsc_json)
    out = tmp_path / "combined"
    with pytest.raises(KeyboardInterrupt):
        lcsc.write_combined(out, run, alpha)
    assert not out.exists()  # only combined.partial, which no command reads as a run
    assert sample_cli.COMMAND(["cmjax-sample", f"--workdir={out}", "--num_samples=4"]) == 2
    monkeypatch.undo()
    lcsc.write_combined(out, run, alpha)  # the leftover is replaced, the rerun finishes
    assert (out / "lcsc.json").is_file() and not (tmp_path / "combined.partial").exists()
    assert int(read_run(out).state.step) == 20
