"""Sample-quality metrics of a run, for the in-loop evaluator and LCSC alike.

One :class:`Metric` per kind of data: the sliced Wasserstein distance to held-out data for
vector data, FID when ``hp.eval`` names Inception weights and reference statistics, and the
digits FD proxy (not FID) on the embedded 8x8 digits. Lower is better for every one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cmjax import images
from cmjax.config.hparams import TrainHParams
from cmjax.data import Dataset, make_source
from cmjax.errors import ConfigError
from cmjax.evaluation import digits_proxy
from cmjax.evaluation.sliced_wasserstein import sliced_wasserstein

# Seeds of the held-out draws: never the training run's own batches.
HELD_OUT_SEEDS = {"search": 10**6, "eval": 2 * 10**6}


@dataclasses.dataclass(frozen=True)
class Metric:
    """A sample-quality score (lower is better) of (N, ...) float samples in data units.

    ``device_fn(x, reference)`` is jittable and vmappable (scored on device, LCSC's population
    members in parallel); ``host_fn(x_numpy, reference)`` runs on the host. ``reference(which)``
    builds what the score compares with ("search" or "eval" split). ``short`` prefixes the
    evaluator's scalars (``sw_1step``); ``extras`` are reported beside them (a floor).
    """

    name: str
    short: str
    reference: Callable[[str], Any]
    device_fn: Callable[[jax.Array, Any], jax.Array] | None = None
    host_fn: Callable[[np.ndarray, Any], float] | None = None
    extras: Callable[[], dict[str, float]] = dict

    def score(self, x: np.ndarray, reference: Any) -> float:
        """The score of host samples ``x`` against ``reference`` (``self.reference(which)``)."""
        if self.device_fn is not None:
            return float(self.device_fn(jnp.asarray(x), reference))
        return float(self.host_fn(np.asarray(x), reference))


def held_out_data(hp: TrainHParams, num: int, which: str = "search") -> np.ndarray:
    """``num`` data points the run never trained on (another seed for each ``which``)."""
    seed = hp.seed + HELD_OUT_SEEDS[which]
    source = make_source(hp.data, seed=seed)
    data = Dataset(source, num, seed=seed, random_flip=hp.data.random_flip)
    return np.asarray(data.batch(0)["x"])


def sliced_wasserstein_metric(hp: TrainHParams, num: int) -> Metric:
    """Sliced W2 (512 projections) to ``num`` held-out points; a fixed projection key."""

    def reference(which):
        return jnp.asarray(held_out_data(hp, num, which).reshape(num, -1))

    def score(x, ref):
        return sliced_wasserstein(x.reshape(x.shape[0], -1), ref, jax.random.key(7))

    return Metric("sliced_wasserstein", "sw", reference, device_fn=score)


def fid_metric(hp: TrainHParams, num: int) -> Metric:
    """FID against ``hp.eval.ref_stats`` with the Inception weights of ``hp.eval``."""
    from cmjax.evaluation.fid import (
        dataset_statistics,
        frechet_distance,
        load_reference_stats,
        make_feature_fn,
    )
    from cmjax.evaluation.inception import load_inception_weights

    if not hp.eval.inception_path or not hp.eval.ref_stats:
        raise ConfigError(
            "FID needs config.eval.inception_path and config.eval.ref_stats (see README: FID; "
            "cmjax-combine: --inception and --ref_stats); for the 8x8 digits the proxy needs "
            "neither, and --config.eval.every_steps=0 turns in-loop evaluation off"
        )
    features = make_feature_fn(load_inception_weights(hp.eval.inception_path))
    ref = load_reference_stats(hp.eval.ref_stats)
    batch = hp.eval.batch_size
    del num

    def score(x, _):
        u8 = images.to_uint8(x)
        if u8.shape[-1] == 1:
            u8 = np.repeat(u8, 3, axis=-1)
        chunks = (u8[i : i + batch] for i in range(0, len(u8), batch))
        return frechet_distance(*dataset_statistics(features, chunks), *ref)

    return Metric("fid", "fid", lambda which: None, host_fn=score)


def digits_proxy_metric(hp: TrainHParams, num: int) -> Metric:
    """``digits_fd_proxy`` (cmjax/evaluation/digits_proxy.py): the Frechet distance in a small
    digits classifier's features to all 1,797 digits; NOT FID. Host-side."""
    if not digits_proxy.applies_to(hp.data.name, hp.data_shape):
        raise ConfigError(
            "the digits proxy scores only the embedded 8x8x1 digits (data.name='digits'); "
            "for other images use FID (--metric=fid with --inception and --ref_stats)"
        )
    del num

    def score(x, _):
        return digits_proxy.digits_fd_proxy(images.to_uint8(x))

    return Metric(
        "digits_fd_proxy",
        "digits_fd_proxy",
        lambda which: None,
        host_fn=score,
        extras=lambda: {"digits_fd_proxy_floor": digits_proxy.data_floor()},
    )


METRICS: dict[str, Callable[[TrainHParams, int], Metric]] = {
    "sliced_wasserstein": sliced_wasserstein_metric,
    "fid": fid_metric,
    "digits_proxy": digits_proxy_metric,
}


def default_metric_name(hp: TrainHParams) -> str:
    """sliced_wasserstein for vector data, fid when hp.eval configures it, else the digits
    proxy (which refuses data other than the embedded digits)."""
    if len(hp.data_shape) == 1:
        return "sliced_wasserstein"
    if hp.eval.inception_path and hp.eval.ref_stats:
        return "fid"
    if digits_proxy.applies_to(hp.data.name, hp.data_shape):
        return "digits_proxy"
    return "fid"  # which names what it needs
