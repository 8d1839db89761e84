"""Launch scripts: --dry-run prints the exact commands; missing arguments fail with usage."""

import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"


def _run(script, *args):
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args], capture_output=True, text=True, timeout=60
    )


def test_tpu_create_spot_queued_resource():
    r = _run(
        "tpu_pod.sh",
        "create",
        "--name",
        "ict",
        "--zone",
        "us-east5-a",
        "--accelerator",
        "v5p-64",
        "--runtime",
        "v2-alpha-tpuv5",
        "--spot",
        "--project",
        "proj",
        "--dry-run",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "create",
        "ict",
        "--node-id",
        "ict",
        "--zone",
        "us-east5-a",
        "--accelerator-type",
        "v5p-64",
        "--runtime-version",
        "v2-alpha-tpuv5",
        "--spot",
        "--project",
        "proj",
    ]


def test_tpu_setup_installs_tpu_extra_on_all_workers():
    r = _run(
        "tpu_pod.sh",
        "setup",
        "--name",
        "ict",
        "--zone",
        "z",
        "--repo",
        "https://example.org/cmjax.git",
        "--dry-run",
    )
    assert r.returncode == 0, r.stderr
    assert "--worker all" in r.stdout
    assert "pip\\ install\\ -q\\ -e\\ \\'.\\[tpu\\]\\'" in r.stdout


def test_tpu_run_same_command_on_all_workers_with_bucket_workdir():
    r = _run(
        "tpu_pod.sh",
        "run",
        "--name",
        "ict",
        "--zone",
        "z",
        "--config",
        "configs/imagenet64_ict.py:deep",
        "--workdir",
        "gs://bkt/in64",
        "--dry-run",
        "--",
        "--config.model.dtype=bfloat16",
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout.replace("\\", "")
    assert "tpu-vm ssh ict --zone z --worker all --command" in out
    assert (
        "cmjax-train --config=configs/imagenet64_ict.py:deep --workdir=gs://bkt/in64 "
        "--config.model.dtype=bfloat16"
    ) in out
    r = _run(
        "tpu_pod.sh",
        "run",
        "--name",
        "ict",
        "--zone",
        "z",
        "--config",
        "c.py",
        "--workdir",
        "/local/dir",
        "--dry-run",
    )
    assert r.returncode == 2 and "gs://" in r.stderr


def test_tpu_logs_and_delete():
    r = _run("tpu_pod.sh", "logs", "--name", "ict", "--zone", "z", "--dry-run")
    assert "--worker 0" in r.stdout and "tail" in r.stdout
    r = _run("tpu_pod.sh", "delete", "--name", "ict", "--zone", "z", "--dry-run")
    assert r.stdout.split()[:6] == [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "delete",
        "ict",
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        (["create", "--zone", "z", "--dry-run"], "--name is required"),
        (["create", "--name", "n", "--zone", "z", "--dry-run"], "--accelerator is required"),
        (["run", "--name", "n", "--zone", "z", "--dry-run"], "--config is required"),
        (["setup", "--name", "n", "--zone", "z", "--dry-run"], "--repo is required"),
        (["explode"], "unknown action"),
        ([], "missing action"),
    ],
)
def test_tpu_missing_arguments_exit_with_usage(args, message):
    r = _run("tpu_pod.sh", *args)
    assert r.returncode == 2
    assert message in r.stderr and "launch/tpu_pod.sh create" in r.stderr


def test_gpu_local_installs_cuda_extra_and_selects_gpus():
    r = _run(
        "gpu_local.sh",
        "--config",
        "configs/cifar10_ict.py",
        "--workdir",
        "/runs/c10",
        "--gpus",
        "0,1",
        "--install",
        "--dry-run",
        "--",
        "--config.model.dtype=bfloat16",
    )
    assert r.returncode == 0, r.stderr
    lines = [line.replace("\\", "").strip() for line in r.stdout.splitlines()]
    assert lines[1] == ".venv/bin/pip install -e .[cuda]"
    assert lines[2] == (
        "env XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 CUDA_VISIBLE_DEVICES=0,1 "
        ".venv/bin/cmjax-train --config=configs/cifar10_ict.py "
        "--workdir=/runs/c10 --config.model.dtype=bfloat16"
    )
    r = _run("gpu_local.sh", "--workdir", "w", "--dry-run")
    assert r.returncode == 2 and "--config is required" in r.stderr


def test_slurm_example_needs_config_and_workdir():
    r = _run("slurm_multinode.sbatch")
    assert r.returncode == 2 and "usage: sbatch" in r.stderr
    text = (LAUNCH / "slurm_multinode.sbatch").read_text()
    assert "srun" in text and "--requeue" in text and "--signal=TERM" in text
