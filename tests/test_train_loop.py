"""The training system: CLI end to end, exact resume after SIGKILL, SIGTERM, fewer devices,
two processes on loopback, corrupt checkpoints and config typos."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from cmjax.config.hparams import ConfigError
from cmjax.config.loading import load_config
from cmjax.core import parallel
from cmjax.errors import NonFiniteError
from cmjax.training.loop import train_and_evaluate
from cmjax.workdir.checkpoint import Checkpointer, CheckpointError, latest_step

ROOT = Path(__file__).resolve().parents[1]


def _toy_config(total_steps=40, every=10):
    config = load_config("toy2d")
    config.model.update(hidden=32, depth=2)
    config.training.update(total_steps=total_steps, batch_size=64)
    config.training.log_every = 10
    config.checkpoint = dict(every_steps=every, keep=3, milestone_every=0, async_save=True)
    config.eval.every_steps = 0  # the states are compared; samplers would only add compiles
    return config


def _overrides(config):
    """--config.* flags that turn configs/toy2d.py into ``config`` in a subprocess."""
    return [
        "--config.model.hidden=32",
        "--config.model.depth=2",
        f"--config.training.total_steps={config.training.total_steps}",
        "--config.training.batch_size=64",
        "--config.eval.every_steps=0",
    ]


def _cli(workdir, config, devices=8, extra_env=None):
    """Start ``python -m cmjax.cli.train`` on the toy config with ``devices`` fake CPU devices."""
    env = dict(os.environ)
    kept = [f for f in env["XLA_FLAGS"].split() if "host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])
    env.update(extra_env or {})
    cmd = [
        sys.executable,
        "-m",
        "cmjax.cli.train",
        f"--config={ROOT}/configs/toy2d.py",
        f"--workdir={workdir}",
        *_overrides(config),
        f"--config.checkpoint.every_steps={config.checkpoint.every_steps}",
    ]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_checkpoint(workdir, proc, timeout=600):  # slow on a loaded 2-core box
    ckpts = Path(workdir) / "checkpoints"
    start = time.time()
    while time.time() - start < timeout:
        if ckpts.is_dir() and any(p.name.isdigit() and int(p.name) >= 10 for p in ckpts.iterdir()):
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited early:\n{proc.stdout.read()}")
        time.sleep(0.05)
    pytest.fail("no checkpoint appeared")


def _restore(workdir, config, devices=None):
    mesh = parallel.make_mesh(devices=devices)
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        return ckpt.restore(parallel.abstract_train_state(config, mesh))
    finally:
        ckpt.close()


def _assert_states_equal(a, b, exact=True):
    for name in ("params", "ema_params", "opt_state"):
        for x, y in zip(
            jax.tree.leaves(getattr(a, name)), jax.tree.leaves(getattr(b, name)), strict=True
        ):
            if exact:
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
            else:  # other reduction orders: float differences grow with the steps (~2e-5 at 300)
                np.testing.assert_allclose(
                    np.asarray(x), np.asarray(y), rtol=5e-3, atol=1e-4, err_msg=name
                )


# Steps of the reference run: long enough that a run is stopped mid-way (the tests signal it
# right after its step-10 checkpoint) and that the curriculum doubles N several times.
TOTAL = 100


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: TOTAL toy steps in one go on 8 devices."""
    config = _toy_config(total_steps=TOTAL, every=10)
    state = train_and_evaluate(config, tmp_path_factory.mktemp("whole"))
    assert int(state.step) == TOTAL
    return config, state


def test_resume_after_sigkill_is_bitwise_exact(uninterrupted, tmp_path):
    config, reference = uninterrupted
    proc = _cli(tmp_path, config)
    _wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest_step(tmp_path)
    assert killed_at is not None and killed_at < TOTAL  # really interrupted mid-run
    resumed = train_and_evaluate(config, tmp_path)
    assert int(resumed.step) == TOTAL
    _assert_states_equal(reference, resumed, exact=True)


def test_sigterm_saves_current_step_and_resume_on_4_devices_matches(uninterrupted, tmp_path):
    config, reference = uninterrupted
    proc = _cli(tmp_path, config)
    _wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    saved = [line for line in out.splitlines() if "preemption requested" in line]
    assert saved, out
    step = int(saved[-1].split("saved step ")[1].split(",")[0])
    assert latest_step(tmp_path) == step < TOTAL
    assert int(_restore(tmp_path, config).step) == step  # complete and readable
    proc = _cli(tmp_path, config, devices=4)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    resumed = _restore(tmp_path, config)
    assert int(resumed.step) == TOTAL
    _assert_states_equal(reference, resumed, exact=False)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_loopback_equal_one_process(uninterrupted, tmp_path):
    config, reference = uninterrupted
    port = _free_port()
    procs = [
        _cli(
            tmp_path,
            config,
            devices=4,
            extra_env={
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(i),
                "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
            },
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    state = _restore(tmp_path, config)
    assert int(state.step) == TOTAL
    _assert_states_equal(reference, state, exact=False)


def test_corrupt_checkpoint_names_the_file(tmp_path):
    config = _toy_config(total_steps=10, every=10)
    train_and_evaluate(config, tmp_path)
    state_dir = tmp_path / "checkpoints" / "10" / "state"
    for f in state_dir.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "ocdbt" in str(f) or f.name == "_METADATA":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    config.training.total_steps = 20
    with pytest.raises(CheckpointError, match=r"no intact checkpoint.*checkpoints/10 "):
        train_and_evaluate(config, tmp_path)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    config = _toy_config(total_steps=10, every=10)
    train_and_evaluate(config, tmp_path)
    config.model.hidden = 48
    config.training.total_steps = 20
    with pytest.raises(CheckpointError, match=r"cannot resume.*model\.hidden: 32 -> 48"):
        train_and_evaluate(config, tmp_path)


def test_resume_with_a_changed_config_warns_naming_the_keys(tmp_path, caplog):
    config = _toy_config(total_steps=10, every=10)
    train_and_evaluate(config, tmp_path)
    config.training.total_steps = 12
    config.optim.learning_rate = 5e-4
    with caplog.at_level("WARNING", logger="cmjax"):
        state = train_and_evaluate(config, tmp_path)
    assert int(state.step) == 12
    (warning,) = [r.getMessage() for r in caplog.records if "differs" in r.getMessage()]
    assert "optim.learning_rate: 0.001 -> 0.0005" in warning
    assert "training.total_steps: 10 -> 12" in warning


def test_config_typos_are_named(tmp_path):
    config = _toy_config()
    config.training.totl_steps = 3
    with pytest.raises(ConfigError, match=r"config\.training\.totl_steps"):
        train_and_evaluate(config, tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmjax.cli.train",
            f"--config={ROOT}/configs/toy2d.py",
            f"--workdir={tmp_path}",
            "--config.optim.learnig_rate=0.1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "learnig_rate" in proc.stderr


def test_non_finite_loss_stops_with_the_step_and_keeps_checkpoint(tmp_path):
    config = _toy_config(total_steps=10, every=5)
    train_and_evaluate(config, tmp_path)
    config.training.total_steps = 40
    config.optim.learning_rate = 1e30  # diverges within a few steps
    with pytest.raises(NonFiniteError, match=r"at step \d+"):
        train_and_evaluate(config, tmp_path)
    last = latest_step(tmp_path)
    state = _restore(tmp_path, config)
    assert int(state.step) == last
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
