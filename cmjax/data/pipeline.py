"""Deterministic, step-indexed batches: the batch of step k is a pure function of (seed, k).

Every epoch is a permutation of all records drawn from (seed, epoch); global batch k is the
slice [k * G, (k + 1) * G) of the concatenated epochs, and process p reads only its own
contiguous part of it. So the data a step sees does not depend on how many processes read
it, a resumed run needs nothing but the step to continue exactly, and processes never read
the same record within a step.
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Iterator

import numpy as np

from cmjax.data import sources
from cmjax.data.spec import DataHParams

Batch = dict[str, np.ndarray]


class Dataset:
    """Per-process batches {"x": float32 (B, ...), "label": int32 (B,)} for any step."""

    def __init__(
        self,
        source,
        global_batch_size: int,
        seed: int = 0,
        random_flip: bool = False,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if global_batch_size % process_count:
            raise sources.DataError(
                f"global batch {global_batch_size} does not split over {process_count} processes"
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if len(source) == 0:
            raise sources.DataError(f"dataset {source.name} has no examples")
        self.source = source
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.seed = seed
        self.random_flip = random_flip and source.is_image
        self.process_index = process_index

    @functools.lru_cache(maxsize=4)  # noqa: B019 (the cache lives as long as the dataset)
    def _epoch_permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.source))

    def global_indices(self, step: int) -> np.ndarray:
        """Record indices of the whole global batch of ``step``: (G,) int64."""
        g = self.global_batch_size
        if isinstance(self.source, sources.ToyStream):
            return np.arange(step * g, (step + 1) * g, dtype=np.int64)
        n = len(self.source)
        flat = np.arange(step * g, (step + 1) * g, dtype=np.int64)
        out = np.empty(g, np.int64)
        for epoch in np.unique(flat // n):
            sel = flat // n == epoch
            out[sel] = self._epoch_permutation(int(epoch))[flat[sel] % n]
        return out

    def batch(self, step: int) -> Batch:
        """This process's batch of ``step``; images scaled to [-1, 1] and maybe flipped."""
        lo = self.process_index * self.local_batch_size
        local = slice(lo, lo + self.local_batch_size)
        x, labels = self.source.get(self.global_indices(step)[local])
        if self.source.is_image:
            x = x.astype(np.float32) / 127.5 - 1.0
            if self.random_flip:
                flips = np.random.default_rng([self.seed, step, 1]).random(self.global_batch_size)
                x = np.where(flips[local, None, None, None] < 0.5, x[:, :, ::-1], x)
        batch = {"x": np.ascontiguousarray(x, np.float32)}
        if labels is not None:
            batch["label"] = labels.astype(np.int32)
        return batch

    def iterate(self, start_step: int = 0, prefetch: int = 2) -> Iterator[tuple[int, Batch]]:
        """(step, batch) from ``start_step`` on, with ``prefetch`` batches built ahead."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, prefetch)) as pool:
            pending = [pool.submit(self.batch, start_step + i) for i in range(prefetch + 1)]
            step = start_step
            while True:
                batch = pending.pop(0).result()
                pending.append(pool.submit(self.batch, step + prefetch + 1))
                yield step, batch
                step += 1


TFDS_NAMES = {"cifar10": ("cifar10", False), "imagenet64": ("imagenet_resized/64x64", True)}
SOURCES = ("toy2d", "digits", "cifar10", "imagenet64", "tfds", "npz", "image_folder", "prepared")


def make_source(data: DataHParams, seed: int = 0):
    """The record source named by ``data.name`` (``hp.data``)."""
    name, shape, num_classes = data.name, tuple(data.shape), data.num_classes
    if name == "toy2d":
        return sources.ToyStream(data.distribution, seed)
    if name == "digits":
        src = sources.digits_source()
        return sources.ArraySource(
            sources.resize_images(src.x, shape, "digits", data.resize),
            src.labels if num_classes else None,
            "digits",
        )
    if name in TFDS_NAMES or name == "tfds":
        tfds_name, labelled = TFDS_NAMES.get(name, (data.tfds_name, num_classes > 0))
        if not tfds_name:
            raise sources.DataError("config.data.name='tfds' needs config.data.tfds_name")
        if num_classes and not labelled:
            raise sources.DataError(f"{tfds_name} is used unconditionally; set num_classes=0")
        return sources.TFDSSource(
            tfds_name, data.split, data.data_dir or None, with_labels=num_classes > 0
        )
    if name == "npz":
        return sources.npz_source(data.path, shape, num_classes, data.resize)
    if name == "image_folder":
        return sources.image_folder_source(data.path, shape, num_classes, data.resize)
    if name == "prepared":
        return sources.prepared_source(data.path, shape, num_classes)
    raise sources.DataError(f"unknown config.data.name {name!r}; choose one of {SOURCES}")


def make_dataset(
    data: DataHParams,
    batch_size: int,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Dataset:
    """The training Dataset of a run: ``hp.data``, ``hp.training.batch_size``, ``hp.seed``."""
    return Dataset(
        make_source(data, seed=seed),
        global_batch_size=batch_size,
        seed=seed,
        random_flip=data.random_flip,
        process_index=process_index,
        process_count=process_count,
    )
