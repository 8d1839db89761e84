"""The notebook quickstart (examples/quickstart.py) runs top to bottom."""

import os
import runpy
from pathlib import Path

import numpy as np
from PIL import Image

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def test_quickstart_runs_and_writes_loss_and_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("CMJAX_QUICKSTART_STEPS", "40")
    monkeypatch.setenv("CMJAX_QUICKSTART_OUT", str(tmp_path))
    monkeypatch.chdir(QUICKSTART.parents[1])
    ns = runpy.run_path(str(QUICKSTART))
    assert len(ns["losses"]) == 40 and np.isfinite(ns["losses"]).all()
    assert int(ns["state"].step) == 40
    assert sorted(os.listdir(tmp_path)) == ["loss.png", "samples_1step.png", "samples_2step.png"]
    grid = np.asarray(Image.open(tmp_path / "samples_2step.png"))
    assert grid.shape == (4 * 91, 4 * 91)  # 10x10 grid of 8x8 digits, 1-pixel gaps, 4x
