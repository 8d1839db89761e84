"""Samplers, FID pieces (Fréchet distance, Inception, weight loading) and the sample/FID CLIs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmjax import objectives
from cmjax.cli import fid as fid_cli
from cmjax.cli import sample as sample_cli
from cmjax.config.loading import load_config
from cmjax.core.sampling import SamplerCache, make_sampler, sample
from cmjax.evaluation import fid
from cmjax.evaluation.inception import (
    FIDInception,
    WeightsError,
    init_inception,
    load_inception_weights,
)
from cmjax.objectives import ict_schedule as ict
from cmjax.training.loop import train_and_evaluate


def _random_stats(rng, d, n):
    f = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)
    return f.mean(0), np.cov(f, rowvar=False)


def test_frechet_distance_matches_independent_eigen_computation():
    rng = np.random.default_rng(0)
    mu1, s1 = _random_stats(rng, 32, 500)
    mu2, s2 = _random_stats(rng, 32, 500)
    # tr((S1 S2)^1/2) = sum of square roots of the (real, positive) eigenvalues of S1 S2.
    eig = np.linalg.eigvals(s1 @ s2)
    want = (
        np.sum((mu1 - mu2) ** 2)
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.sum(np.sqrt(eig.real.clip(0)))
    )
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-6)
    # The reference code's formula: scipy's general matrix square root.
    from scipy import linalg

    by_sqrtm = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(by_sqrtm, rel=1e-6)
    assert abs(fid.frechet_distance(mu1, s1, mu1, s1)) < 1e-8 * np.trace(s1)


def test_frechet_distance_survives_near_singular_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(10, 64)), rng.normal(size=(10, 64))  # rank 9 of 64
    d = fid.frechet_distance(*fid.activation_statistics(a), *fid.activation_statistics(b))
    assert np.isfinite(d) and d > 0
    same = fid.frechet_distance(*fid.activation_statistics(a), *fid.activation_statistics(a))
    assert abs(same) < 1e-3


def test_reference_stats_errors(tmp_path):
    with pytest.raises(fid.StatsError, match="not found"):
        fid.load_reference_stats(tmp_path / "nope.npz")
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
    with pytest.raises(fid.StatsError, match="'mu' and 'sigma'"):
        fid.load_reference_stats(tmp_path / "bad.npz")


# pytorch-fid's FID Inception, written down independently of cmjax: (module, out, in, kh, kw).
def _torch_inception_convs():
    convs = [
        ("Conv2d_1a_3x3", 32, 3, 3, 3),
        ("Conv2d_2a_3x3", 32, 32, 3, 3),
        ("Conv2d_2b_3x3", 64, 32, 3, 3),
        ("Conv2d_3b_1x1", 80, 64, 1, 1),
        ("Conv2d_4a_3x3", 192, 80, 3, 3),
    ]

    def block_a(name, cin, pool):
        return [
            (f"{name}.branch1x1", 64, cin, 1, 1),
            (f"{name}.branch5x5_1", 48, cin, 1, 1),
            (f"{name}.branch5x5_2", 64, 48, 5, 5),
            (f"{name}.branch3x3dbl_1", 64, cin, 1, 1),
            (f"{name}.branch3x3dbl_2", 96, 64, 3, 3),
            (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
            (f"{name}.branch_pool", pool, cin, 1, 1),
        ]

    def block_c(name, c7):
        return [
            (f"{name}.branch1x1", 192, 768, 1, 1),
            (f"{name}.branch7x7_1", c7, 768, 1, 1),
            (f"{name}.branch7x7_2", c7, c7, 1, 7),
            (f"{name}.branch7x7_3", 192, c7, 7, 1),
            (f"{name}.branch7x7dbl_1", c7, 768, 1, 1),
            (f"{name}.branch7x7dbl_2", c7, c7, 7, 1),
            (f"{name}.branch7x7dbl_3", c7, c7, 1, 7),
            (f"{name}.branch7x7dbl_4", c7, c7, 7, 1),
            (f"{name}.branch7x7dbl_5", 192, c7, 1, 7),
            (f"{name}.branch_pool", 192, 768, 1, 1),
        ]

    def block_e(name, cin):
        return [
            (f"{name}.branch1x1", 320, cin, 1, 1),
            (f"{name}.branch3x3_1", 384, cin, 1, 1),
            (f"{name}.branch3x3_2a", 384, 384, 1, 3),
            (f"{name}.branch3x3_2b", 384, 384, 3, 1),
            (f"{name}.branch3x3dbl_1", 448, cin, 1, 1),
            (f"{name}.branch3x3dbl_2", 384, 448, 3, 3),
            (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3),
            (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1),
            (f"{name}.branch_pool", 192, cin, 1, 1),
        ]

    convs += block_a("Mixed_5b", 192, 32) + block_a("Mixed_5c", 256, 64)
    convs += block_a("Mixed_5d", 288, 64)
    convs += [
        ("Mixed_6a.branch3x3", 384, 288, 3, 3),
        ("Mixed_6a.branch3x3dbl_1", 64, 288, 1, 1),
        ("Mixed_6a.branch3x3dbl_2", 96, 64, 3, 3),
        ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3),
    ]
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        convs += block_c(name, c7)
    convs += [
        ("Mixed_7a.branch3x3_1", 192, 768, 1, 1),
        ("Mixed_7a.branch3x3_2", 320, 192, 3, 3),
        ("Mixed_7a.branch7x7x3_1", 192, 768, 1, 1),
        ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
        ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1),
        ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3),
    ]
    return convs + block_e("Mixed_7b", 1280) + block_e("Mixed_7c", 2048)


def _write_reference_format(path, rng):
    """A state dict with pytorch-fid's key names and OIHW layout, random values, as .npz."""
    tensors = {
        "fc.weight": rng.normal(size=(1008, 2048)).astype(np.float32),
        "fc.bias": np.zeros(1008, np.float32),
    }
    for name, cout, cin, kh, kw in _torch_inception_convs():
        tensors[f"{name}.conv.weight"] = (rng.normal(size=(cout, cin, kh, kw)) * 0.05).astype(
            np.float32
        )
        tensors[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        tensors[f"{name}.bn.bias"] = rng.normal(size=cout).astype(np.float32) * 0.1
        tensors[f"{name}.bn.running_mean"] = rng.normal(size=cout).astype(np.float32) * 0.1
        tensors[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        tensors[f"{name}.bn.num_batches_tracked"] = np.array(0)
    np.savez(path, **tensors)
    return tensors


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception_fid.npz"
    return path, _write_reference_format(path, np.random.default_rng(0))


def test_weight_loader_maps_every_tensor_of_the_reference_format(inception_file):
    path, tensors = inception_file
    variables = load_inception_weights(path)
    assert len(_torch_inception_convs()) == 94
    k = np.asarray(variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"])
    w = tensors["Mixed_6b.branch7x7_2.conv.weight"]
    assert k.shape == (1, 7, 128, 128)
    np.testing.assert_array_equal(k[0, 3, 5, 7], w[7, 5, 0, 3])  # OIHW -> HWIO
    np.testing.assert_array_equal(
        variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
        tensors["Mixed_7c.branch_pool.bn.running_var"],
    )
    n_file = sum(
        v.size
        for k_, v in tensors.items()
        if not k_.startswith("fc.") and not k_.endswith("num_batches_tracked")
    )
    assert sum(x.size for x in jax.tree.leaves(variables)) == n_file
    template = jax.eval_shape(init_inception)
    assert jax.tree.structure(template) == jax.tree.structure(variables)


def test_inception_features_and_cli_fid(inception_file, tmp_path, capsys):
    path, _ = inception_file
    variables = load_inception_weights(path)
    feats = jax.jit(FIDInception().apply)(variables, jnp.zeros((3, 32, 32, 3)))
    assert feats.shape == (3, 2048) and np.isfinite(np.asarray(feats)).all()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    b = rng.integers(0, 128, (6, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=a)
    np.savez(tmp_path / "b.npz", arr_0=b)

    def cli(samples, reference):
        code = fid_cli.COMMAND(
            [
                "cmjax-fid",
                f"--samples={samples}",
                f"--reference={reference}",
                f"--inception={path}",
                "--inception_batch_size=3",
                f"--save_stats={tmp_path / 'stats.npz'}",
            ]
        )
        out = capsys.readouterr()
        assert code == 0, out.err
        return float(out.out.split("FID ")[1])

    assert abs(cli(tmp_path / "a.npz", tmp_path / "a.npz")) < 1e-2
    assert cli(tmp_path / "a.npz", tmp_path / "b.npz") > 1e-2
    assert set(np.load(tmp_path / "stats.npz").files) == {"mu", "sigma"}


def test_weight_loader_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found.*pt_inception"):
        load_inception_weights(tmp_path / "missing.npz")
    np.savez(tmp_path / "wrong.npz", **{"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 5, 5))})
    with pytest.raises(WeightsError, match=r"Conv2d_1a_3x3.conv.weight.*shape"):
        load_inception_weights(tmp_path / "wrong.npz")
    np.savez(tmp_path / "partial.npz", **{"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3))})
    with pytest.raises(WeightsError, match="have no tensor"):
        load_inception_weights(tmp_path / "partial.npz")


ICT = objectives.ICT(total_steps=10)


def _linear_net(variables, x, c, labels, train, rngs=None):
    """F(x) = 0.3 x + 0.1: keeps every sampler step visible in the output."""
    return 0.3 * x + 0.1


def test_multistep_with_only_sigma_max_is_one_step_and_noise_is_sqrt_s2_minus_min2():
    key = jax.random.key(3)
    one = sample(ICT, _linear_net, {}, key, (4, 5), ICT.plan(1))
    multi = sample(ICT, _linear_net, {}, key, (4, 5), ICT.plan(times=(80.0,)))
    np.testing.assert_array_equal(np.asarray(one), np.asarray(multi))
    # Two steps by hand: x1 = f(80 z0, 80); x2 = f(x1 + sqrt(s^2 - smin^2) z1, s).
    k0, k1 = jax.random.split(key, 2)

    def f(x, s):
        c_skip, c_out, c_in = ict.consistency_scalings(jnp.float32(s))
        return c_skip * x + c_out * (0.3 * c_in * x + 0.1)

    x1 = f(80.0 * jax.random.normal(k0, (4, 5)), 80.0)
    x2 = f(x1 + np.sqrt(0.821**2 - 0.002**2) * jax.random.normal(k1, (4, 5)), 0.821)
    assert ICT.plan(2).times == (80.0, 0.821)
    got = sample(ICT, _linear_net, {}, key, (4, 5), ICT.plan(2))
    np.testing.assert_allclose(np.asarray(got), np.asarray(x2), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="decreasing"):
        ICT.plan(times=[0.821, 80.0])


def test_sharded_sampling_equals_single_device():
    from cmjax import create_train_state
    from cmjax.core import parallel

    config = load_config("cifar10_ict:tiny")
    state = create_train_state(config, jax.random.key(0))
    params = jax.tree.map(lambda p: p + 0.01, state.ema_params[0])  # make outputs non-trivial
    mesh = parallel.make_mesh()
    shape = (8, 32, 32, 3)
    plan = ICT.plan(2)
    one = make_sampler(ICT, state.apply_fn, shape, plan)(params, jax.random.key(1))
    eight = make_sampler(ICT, state.apply_fn, shape, plan, mesh=mesh)(params, jax.random.key(1))
    assert len(eight.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(one), np.asarray(eight), rtol=1e-4, atol=1e-5)


def test_sampler_cache_builds_once_per_shape_and_plan_and_matches_make_sampler():
    cache = SamplerCache(ICT, _linear_net)
    draw = cache.get((4, 5), ICT.plan(2))
    assert cache.get([4, 5], ICT.plan(2)) is draw
    assert cache.get((4, 5), ICT.plan(1)) is not draw
    assert cache.get((8, 5), ICT.plan(2)) is not draw
    assert len(cache) == 3
    key = jax.random.key(3)
    got = draw({}, key)
    draw({}, jax.random.key(4))
    assert draw._cache_size() == 1  # two draws, one compilation
    want = make_sampler(ICT, _linear_net, (4, 5), ICT.plan(2))({}, key)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


class _ImageWriter:
    def __init__(self):
        self.steps = []

    def write_images(self, step, images):
        self.steps.append(step)


def test_a_runs_grids_and_evaluations_build_each_sampler_once(tmp_path, monkeypatch):
    """Three sample grids and two digits evaluations through one run-wide cache (as the
    training loop wires them) build 4 samplers: the 1- and 2-step plans at the grid's
    batch (16) and at the evaluation's (8). make_sampler is stubbed to count the builds, the
    proxy's classifier to skip its training, and the state to skip the network's init."""
    from types import SimpleNamespace

    from cmjax.config.hparams import TrainHParams
    from cmjax.core import sampling
    from cmjax.evaluation import digits_proxy
    from cmjax.evaluation.evaluator import make_evaluator
    from cmjax.training.reporting import write_samples

    built = []

    def counting_make_sampler(objective, apply_fn, shape, plan, *, mesh=None):
        built.append((shape, plan.nfe))
        return lambda params, rng, labels=None: jnp.zeros(shape)

    monkeypatch.setattr(sampling, "make_sampler", counting_make_sampler)
    monkeypatch.setattr(digits_proxy, "digits_fd_proxy", lambda x: float(len(x)))
    monkeypatch.setattr(digits_proxy, "data_floor", lambda: 0.39)
    config = load_config("default:tiny")
    config.eval.update(every_steps=1, num_samples=16, batch_size=8)
    hp = TrainHParams.from_config(config)
    state = SimpleNamespace(ema_params=({},), apply_fn=_linear_net)
    samplers = sampling.SamplerCache(hp.objective, state.apply_fn)
    writer = _ImageWriter()
    evaluate = make_evaluator(hp, samplers)
    for step in (2, 4, 6):
        write_samples(hp, state, tmp_path, writer, step, samplers)
        scores = evaluate(state)
        assert (scores["digits_fd_proxy_1step"], scores["digits_fd_proxy_2step"]) == (16, 16)
    assert writer.steps == [2, 4, 6]
    assert len(list((tmp_path / "samples").glob("samples_2step_*.png"))) == 3
    assert sorted(built) == [
        ((8, 8, 8, 1), 1),
        ((8, 8, 8, 1), 2),
        ((16, 8, 8, 1), 1),
        ((16, 8, 8, 1), 2),
    ]


def _eval_scores(caplog, step):
    """The scores of the loop's 'eval at step N' line."""
    line = next(r.getMessage() for r in caplog.records if f"eval at step {step}" in r.getMessage())
    return dict(zip(line.split()[4::2], map(float, line.split()[5::2]), strict=True))


def test_two_step_beats_one_step_on_toy_data_and_sample_cli(tmp_path, caplog, capsys):
    """The trained toy model: 2-step samples closer to held-out data than 1-step ones
    (measured after 400 steps: 0.210 vs 0.116)."""
    config = load_config("toy2d")
    config.model.update(hidden=64, depth=2)
    config.training.update(total_steps=400, batch_size=256)
    config.eval.update(every_steps=400, num_samples=4000)
    config.checkpoint.every_steps = 400
    with caplog.at_level("INFO", logger="cmjax"):
        train_and_evaluate(config, tmp_path)
    scores = _eval_scores(caplog, 400)
    assert scores["sw_2step"] < scores["sw_1step"], scores
    argv = ["cmjax-sample", f"--workdir={tmp_path}", "--num_samples=10", "--batch_size=8"]
    assert sample_cli.COMMAND([*argv, "--steps=2", f"--out={tmp_path / 's.npz'}"]) == 0
    assert "consistency at [80, 2] (2 NFE)" in capsys.readouterr().out
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (10, 2)


def test_image_sample_cli_and_in_loop_fid(inception_file, tmp_path, caplog, capsys, monkeypatch):
    """Digits (tiny): cmjax-sample writes uint8 + labels + PNG; the FID evaluator runs in the
    loop (weights and statistics read from config.eval, both samplers scored). The features
    come from a fixed random projection instead of Inception: Inception's own forward pass at
    299x299 (~30 s on 2 cores) is tested above, on the command line."""
    path, _ = inception_file
    projection = np.random.default_rng(1).normal(size=(8 * 8 * 3, 2048)) / 14.0
    loaded = []

    def projected_features(variables):
        loaded.append(variables)
        return lambda x: (np.asarray(x, np.float32).reshape(len(x), -1) / 127.5 - 1) @ projection

    monkeypatch.setattr(fid, "make_feature_fn", projected_features)
    config = load_config("default:tiny")
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(50, 2048))
    np.savez(tmp_path / "ref.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    config.eval.update(
        every_steps=6,
        num_samples=8,
        batch_size=8,
        inception_path=str(path),
        ref_stats=str(tmp_path / "ref.npz"),
    )
    with caplog.at_level("INFO", logger="cmjax"):
        train_and_evaluate(config, tmp_path / "run")
    scores = _eval_scores(caplog, 6)
    assert set(scores) == {"fid_1step", "fid_2step"}
    assert all(np.isfinite(v) and v > 0 for v in scores.values())
    assert len(loaded) == 1 and "Mixed_7c" in loaded[0]["params"]  # the weights of eval
    argv = ["cmjax-sample", f"--workdir={tmp_path / 'run'}", "--num_samples=10", "--batch_size=8"]
    assert sample_cli.COMMAND([*argv, "--steps=2"]) == 0, capsys.readouterr().err
    out = np.load(tmp_path / "run" / "samples_6_2step.npz")
    assert out["arr_0"].shape == (10, 8, 8, 1) and out["arr_0"].dtype == np.uint8
    assert out["arr_1"].shape == (10,) and out["arr_1"].max() < 10
    assert (tmp_path / "run" / "samples_6_2step.png").is_file()
