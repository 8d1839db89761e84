"""Ahead-of-time compilation of the loop's train step (cmjax.core.aot, cmjax-compile).

On this machine's fake CPU devices (always) and, where libtpu is installed (``pip install
"cmjax[tpu]"``; not in the test extra), for a two-host TPU topology: FSDP over 2 devices
halves the per-chip parameter and optimizer bytes the compiler reports.
"""

import importlib.util

import jax
import pytest

from cmjax.cli import compile as compile_cli
from cmjax.config import TrainHParams, load_config
from cmjax.core.aot import chip_figures, compile_train_step

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def toy_hp(fsdp: int) -> TrainHParams:
    config = load_config("toy2d:two_moons,ict")
    config.model.update(hidden=256, depth=3)  # large enough leaves to shard
    config.mesh.fsdp = fsdp
    return TrainHParams.from_config(config)


def test_fsdp_halves_the_argument_bytes_on_cpu_devices():
    data = compile_train_step(toy_hp(1), jax.devices(), 16)
    fsdp = compile_train_step(toy_hp(2), jax.devices(), 16)
    assert (data.mesh, fsdp.mesh) == ({"data": 8, "fsdp": 1}, {"data": 4, "fsdp": 2})
    assert data.global_batch == fsdp.global_batch == 128
    # The state (params, EMA, Adam moments) is almost all of the arguments: halved to 2%.
    assert fsdp.argument_bytes / data.argument_bytes == pytest.approx(0.5, abs=0.01)
    assert data.alias_bytes >= 0.99 * data.argument_bytes - 2**16  # the state is donated
    assert data.flops > 0 and data.estimated_step_s is None  # no cost model for CPU time
    assert any("compiler" in line for line in data.lines())


def test_chip_figures():
    assert chip_figures("", "v5p:2x2x1") == (459e12, 95 * 2**30)
    assert chip_figures("TPU v5 lite") == (197e12, 16 * 2**30)
    assert chip_figures("cpu") == (None, None)


def test_the_cli_compiles_for_this_machine_and_names_a_missing_libtpu(capsys):
    argv = ["cmjax-compile", "--config=configs/toy2d.py", "--per_chip_batch=4"]
    assert compile_cli.COMMAND([*argv, "--topology=cpu"]) == 0
    out = capsys.readouterr().out
    assert "memory per chip (compiler)" in out and "32 in all" in out
    if not HAS_LIBTPU:
        assert compile_cli.COMMAND([*argv, "--topology=v5p:2x2x1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and 'pip install "cmjax[tpu]"' in err[0]


@pytest.mark.skipif(not HAS_LIBTPU, reason='libtpu not installed (pip install "cmjax[tpu]")')
def test_a_two_host_tpu_topology_compiles_with_data_and_fsdp_meshes():
    devices = compile_cli.tpu_devices("v5p:2x2x2", 1)
    assert len(devices) == 8 and len({d.process_index for d in devices}) == 2
    data = compile_train_step(toy_hp(1), devices, 16, topology="v5p:2x2x2")
    fsdp = compile_train_step(toy_hp(2), devices, 16, topology="v5p:2x2x2")
    assert data.processes == 2 and data.fits and data.estimated_step_s > 0
    assert fsdp.argument_bytes / data.argument_bytes == pytest.approx(0.5, abs=0.02)
    assert 0 < data.mfu < 1
