"""cmjax-train end to end on configs/cifar10_ict.py:tiny (its own file so that pytest-xdist
can run it beside the other train-loop tests)."""

import subprocess
import sys
from pathlib import Path

from cmjax.workdir.checkpoint import latest_step

ROOT = Path(__file__).resolve().parents[1]


def test_cli_trains_tiny_cifar10_end_to_end(tmp_path):
    """cmjax-train on configs/cifar10_ict.py:tiny, TFDS mocked inside the CLI process."""
    launcher = (
        "import sys, tensorflow_datasets as tfds\n"
        "from cmjax.cli.train import run\n"
        "with tfds.testing.mock_data(num_examples=32):\n"
        "    sys.argv = ['cmjax-train'] + sys.argv[1:]\n"
        "    run()\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            launcher,
            f"--config={ROOT}/configs/cifar10_ict.py:tiny",
            f"--workdir={tmp_path}",
            "--config.training.total_steps=4",
            "--config.training.sample_every=4",
            "--config.training.num_samples=4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step 4/4" in proc.stdout and "compiled in" in proc.stdout
    assert latest_step(tmp_path) == 4
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "samples_1step_00000004.png",
        "samples_2step_00000004.png",
    ]
    assert (tmp_path / "config.json").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
