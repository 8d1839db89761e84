"""LCSC (cmjax-combine): coefficients sum to 1, one checkpoint with alpha = 1 is reproduced
bit for bit, the search is deterministic, and on a tiny 2-D toy run the combination beats the
best single checkpoint and the EMA on the searched metric and on a held-out seed."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compiled, dataset

from cmjax import create_train_state, lcsc, make_train_step
from cmjax.cli import combine as combine_cli
from cmjax.cli import sample as sample_cli
from cmjax.config import TrainHParams, load_config
from cmjax.core import parallel
from cmjax.errors import ConfigError
from cmjax.evaluation import metrics
from cmjax.workdir.checkpoint import Checkpointer
from cmjax.workdir.init_from import load_source_ema
from cmjax.workdir.runs import read_run

STEPS, EVERY = 400, 50


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A 400-step two-moons iCT run with a checkpoint every 50 steps (8 kept)."""
    workdir = tmp_path_factory.mktemp("toy_run")
    config = load_config("toy2d:two_moons")
    config.model.update(hidden=64, depth=2)
    config.training.update(total_steps=STEPS, batch_size=128, ema_rates=(0.99,))
    state = create_train_state(config, jax.random.key(0))
    data = dataset(config)
    step = compiled(jax.jit(make_train_step(config), donate_argnums=0), state, data.batch(0))
    ckpt = Checkpointer(workdir, every_steps=EVERY, keep=STEPS // EVERY, async_save=False)
    for k in range(STEPS):
        state, _ = step(state, data.batch(k))
        if (k + 1) % EVERY == 0:
            ckpt.save(k + 1, state, config, force=True)
    ckpt.wait_until_finished()
    ckpt.close()
    return workdir


@pytest.fixture(scope="module")
def stacked(toy_run):
    return lcsc.load_stacked(toy_run, include_ema=True)


def test_alpha_parametrization_sums_to_one():
    w = jax.random.normal(jax.random.key(0), (5, 6)) * 3.0
    alpha = lcsc.alpha_from_free(w)
    assert alpha.shape == (5, 7)
    np.testing.assert_allclose(np.asarray(alpha.sum(-1)), 1.0, atol=1e-5)
    assert (np.asarray(alpha) < 0).any()  # negative coefficients are allowed
    np.testing.assert_array_equal(np.asarray(lcsc.free_from_alpha(alpha)), np.asarray(w))


def test_one_checkpoint_with_alpha_one_is_reproduced_bitwise(toy_run, stacked):
    state = read_run(toy_run, 200).state
    single = lcsc.load_stacked(toy_run, steps=[200])
    assert single.num == 1
    out = lcsc.combine(single.stacked, jnp.ones((1,)))
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # one-hot alpha over many candidates picks one exactly, e.g. the EMA at step 200
    k = stacked.index("ema_0.99@200")
    picked = lcsc.combine(stacked.stacked, jnp.eye(stacked.num)[k])
    for a, b in zip(jax.tree.leaves(picked), jax.tree.leaves(state.ema_params[0]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_combination_is_the_weighted_sum(stacked):
    alpha = np.asarray(lcsc.alpha_from_free(jnp.linspace(-0.5, 0.7, stacked.num - 1)))
    out = lcsc.combine(stacked.stacked, jnp.asarray(alpha))
    for o, s in zip(jax.tree.leaves(out), jax.tree.leaves(stacked.stacked), strict=True):
        want = np.tensordot(alpha.astype(np.float64), np.asarray(s, np.float64), axes=1)
        np.testing.assert_allclose(np.asarray(o), want, rtol=1e-5, atol=1e-6)


def _scorer(run, num=1000):
    metric = metrics.sliced_wasserstein_metric(run.hp, num)
    return lcsc.Scorer(run, metric, lcsc.sampler_plan(run.hp, 1), num, per_device=2)


def test_search_is_deterministic(toy_run):
    run = lcsc.load_stacked(toy_run, steps=[300, 350, 400])
    kw = dict(generations=3, population=8, seed=4, progress=None)
    scorer = _scorer(run, 500)
    a = lcsc.search(scorer, **kw)
    b = lcsc.search(scorer, **kw)
    np.testing.assert_array_equal(a.alpha, b.alpha)
    assert a.history == b.history and len(a.history) == 3


def test_scores_are_the_same_one_by_one_and_in_a_sharded_population(stacked):
    scorer = _scorer(stacked, 500)
    alphas = np.asarray(lcsc.alpha_from_free(jax.random.normal(jax.random.key(1), (5, 15))))
    together = scorer(alphas, seed=0)
    apart = np.concatenate([scorer(a[None], seed=0) for a in alphas])
    np.testing.assert_allclose(together, apart, rtol=1e-5)


def test_lcsc_beats_best_single_and_ema_on_the_toy(stacked, capsys):
    """The searched metric by construction (>=); a strict gain there and on a held-out seed
    (another sampling key and another held-out data set) is what this pins."""
    scorer = _scorer(stacked)
    result = lcsc.search(scorer, generations=8, population=8, sigma_init=0.1, seed=0)
    k = stacked.num
    held = scorer(np.concatenate([np.eye(k), result.alpha[None]]), seed=1, which="eval")
    names = [c.name for c in stacked.candidates]
    ema = names.index(f"ema_0.99@{STEPS}")
    best_single = float(result.single_scores.min())
    with capsys.disabled():
        print(
            f"\nLCSC toy: search seed combined {result.score:.5f} vs best single "
            f"{best_single:.5f} ({names[int(result.single_scores.argmin())]}), final EMA "
            f"{result.single_scores[ema]:.5f}; held-out seed combined {held[-1]:.5f} vs best "
            f"single {held[:-1].min():.5f}, final EMA {held[ema]:.5f}; alpha "
            f"{np.round(result.alpha, 3).tolist()}"
        )
    assert abs(float(result.alpha.sum()) - 1.0) < 1e-5
    assert result.score < best_single and result.score < result.single_scores[ema]
    assert held[-1] < held[:-1].min() and held[-1] < held[ema]


def test_cli_writes_a_run_that_cmjax_sample_reads(toy_run, tmp_path, capsys):
    out = tmp_path / "combined"
    argv = [
        "cmjax-combine",
        f"--workdir={toy_run}",
        f"--out={out}",
        "--steps=300,350,400",
        "--generations=2",
        "--population=8",
        "--num_samples=400",
    ]
    assert combine_cli.COMMAND(argv) == 0, capsys.readouterr().err
    assert "LCSC generation 2/2  best sliced_wasserstein" in capsys.readouterr().out
    record = json.loads((out / "lcsc.json").read_text())
    assert abs(sum(record["alpha"]) - 1) < 1e-5 and len(record["alpha"]) == 3
    state = read_run(out).state
    assert int(state.step) == STEPS
    run = lcsc.load_stacked(toy_run, steps=[300, 350, 400])
    want = lcsc.combine(run.stacked, jnp.asarray(record["alpha"], jnp.float32))
    for tree in (state.params, state.ema_params[0]):
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # config.init_from reads the combination as the source run's EMA network parameters
    source = load_source_ema(str(out), parallel.make_mesh())[0]
    for a, b in zip(jax.tree.leaves(source), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sample_cli.COMMAND(["cmjax-sample", f"--workdir={out}", "--num_samples=16"]) == 0
    assert "wrote 16 samples of step 400" in capsys.readouterr().out
    # a second write into the same folder is refused in one line, before any search
    assert combine_cli.COMMAND(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "already holds checkpoints" in line


def test_digits_proxy_metric_scores_a_digits_run(tmp_path):
    """On the embedded (class-conditional) digits the default metric is digits_fd_proxy
    (host-side): a candidate's score equals the proxy of samples drawn with the same key."""
    from cmjax import images
    from cmjax.core.sampling import make_sampler
    from cmjax.evaluation.digits_proxy import digits_fd_proxy

    config = load_config("default:tiny")
    state = create_train_state(config, jax.random.key(0))
    ckpt = Checkpointer(tmp_path, async_save=False)
    ckpt.save(1, state, config, force=True)
    ckpt.wait_until_finished()
    ckpt.close()
    run = lcsc.load_stacked(tmp_path)
    assert metrics.default_metric_name(run.hp) == "digits_proxy"
    metric = metrics.METRICS["digits_proxy"](run.hp, 64)
    plan = lcsc.sampler_plan(run.hp, 1)
    scorer = lcsc.Scorer(run, metric, plan, 64)
    (got,) = scorer(np.ones((1, 1)), seed=3)
    draw = make_sampler(run.hp.objective, state.apply_fn, (64, 8, 8, 1), plan)
    labels = jnp.arange(64) % 10  # the scorer's fixed, balanced labels
    x = np.asarray(draw(state.ema_params[0], jax.random.key(3), labels))
    assert got == pytest.approx(digits_fd_proxy(images.to_uint8(x)), rel=1e-6)
    with pytest.raises(ConfigError, match="embedded 8x8x1 digits"):
        metrics.METRICS["digits_proxy"](TrainHParams.from_config(load_config("toy2d")), 64)
