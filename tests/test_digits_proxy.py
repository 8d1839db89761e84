"""The digits FD proxy (not FID): classifier, floor, sensitivity, determinism, CLI, evaluator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmjax.cli import fid as fid_cli
from cmjax.config import TrainHParams
from cmjax.config.loading import load_config
from cmjax.evaluation import digits_proxy, evaluator

ROOT = Path(__file__).resolve().parents[1]


def test_classifier_generalizes_and_uses_most_hidden_units():
    net = digits_proxy.digits_classifier()
    # Measured 0.967 on the 898 held-out digits (sklearn 1.x, lbfgs, seed 0).
    assert net.held_out_accuracy >= 0.95
    assert 32 <= len(net.alive) <= digits_proxy.HIDDEN[-1]
    x, _ = digits_proxy.digits_data()
    assert net.features(x[:5]).shape == (5, len(net.alive))


def test_proxy_is_small_for_data_and_large_for_noise():
    x, _ = digits_proxy.digits_data()
    rng = np.random.default_rng(0)
    # Measured: halves 0.39, 1,000 real digits vs all 0.073, uniform noise 38.3,
    # digits at 70% brightness 20.2.
    floor = digits_proxy.data_floor()
    assert 0.1 < floor < 0.8
    assert digits_proxy.digits_fd_proxy(x[rng.permutation(len(x))[:1000]]) < floor
    noise = rng.integers(0, 256, (1000, 8, 8, 1), dtype=np.uint8)
    assert digits_proxy.digits_fd_proxy(noise) > 20.0
    dimmed = (x.astype(np.float64) * 0.7).astype(np.uint8)
    assert digits_proxy.digits_fd_proxy(dimmed) > 10 * floor


def test_proxy_is_deterministic_across_retraining():
    x, _ = digits_proxy.digits_data()
    sample = x[::3]
    first = (digits_proxy.digits_fd_proxy(sample), digits_proxy.data_floor())
    for cached in (
        digits_proxy.digits_classifier,
        digits_proxy.reference_statistics,
        digits_proxy.data_floor,
    ):
        cached.cache_clear()
    assert (digits_proxy.digits_fd_proxy(sample), digits_proxy.data_floor()) == first


def test_proxy_rejects_float_or_wrong_shape():
    with pytest.raises(ValueError, match="to_uint8"):
        digits_proxy.digits_fd_proxy(np.zeros((4, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 8, 8, 1\)"):
        digits_proxy.digits_fd_proxy(np.zeros((4, 8, 8, 3), np.uint8))


def test_fid_cli_scores_8x8_samples_with_the_proxy_and_no_inception(tmp_path, capsys):
    x, _ = digits_proxy.digits_data()
    np.savez(tmp_path / "s.npz", arr_0=x[:1000])
    assert fid_cli.COMMAND(["cmjax-fid", f"--samples={tmp_path / 's.npz'}"]) == 0
    stdout = capsys.readouterr().out
    assert "NOT FID" in stdout
    got = float(stdout.split("digits_fd_proxy ")[1].split()[0])
    assert got == pytest.approx(digits_proxy.digits_fd_proxy(x[:1000]), abs=1e-4)
    floor = float(stdout.split("floor ")[1].split(";")[0])
    assert floor == pytest.approx(digits_proxy.data_floor(), abs=1e-4)


def test_in_loop_evaluator_reports_the_proxy_for_digits(monkeypatch):
    """The evaluator scores what ``generate`` draws (stubbed here: real digits for one step,
    noise for two; the sampler itself is exercised by the in-loop FID test)."""
    x, _ = digits_proxy.digits_data()
    real = x[:1000].astype(np.float32) / 127.5 - 1.0
    noise = np.random.default_rng(0).uniform(-1, 1, real.shape).astype(np.float32)

    def fake_generate(hp, state, plan, num, batch, **kw):
        assert (num, batch) == (1000, 500)
        return (real if plan.nfe == 1 else noise), None

    monkeypatch.setattr(evaluator, "generate", fake_generate)
    config = load_config("default:tiny")
    config.eval.update(every_steps=1, num_samples=1000, batch_size=500)
    scores = evaluator.make_evaluator(TrainHParams.from_config(config))(state=None)
    assert list(scores) == [
        "digits_fd_proxy_1step",
        "digits_fd_proxy_2step",
        "digits_fd_proxy_floor",
    ]
    assert scores["digits_fd_proxy_floor"] == pytest.approx(digits_proxy.data_floor())
    assert scores["digits_fd_proxy_1step"] == pytest.approx(digits_proxy.digits_fd_proxy(x[:1000]))
    assert scores["digits_fd_proxy_1step"] < scores["digits_fd_proxy_floor"]
    assert scores["digits_fd_proxy_2step"] > 20.0
