"""Images/s of the CIFAR-10 input pipeline on this machine's CPU.

    python benchmarks/data_throughput.py [--batch 1024] [--steps 20]

Measures the step-indexed pipeline (permutation, gather, scaling to [-1, 1], random flips,
prefetch thread) on (a) CIFAR-10-sized data held in memory (50,000 uint8 32x32x3 images,
how `cifar10` runs once its array_record files are in the page cache) and (b) TFDS's
`data_source` path under `tfds.testing.mock_data` (per-record reads and decode, offline).
Compare with the train step's images/s from benchmarks/throughput.py: the pipeline must
deliver at least 3x that.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cmjax.data import DataHParams, Dataset, make_source
from cmjax.data.sources import ArraySource


def images_per_second(dataset: Dataset, steps: int) -> float:
    batches = dataset.iterate(0, prefetch=2)
    next(batches)  # warm up the executor and the first permutation
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return steps * dataset.local_batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    in_memory = ArraySource(
        rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8), None, "cifar10-in-memory"
    )
    rate = images_per_second(Dataset(in_memory, args.batch, random_flip=True), args.steps)
    print(f"{'source':32s} {'batch':>6s} {'images/s':>10s}")
    print(f"{'cifar10 (in memory)':32s} {args.batch:6d} {rate:10.0f}")

    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=50_000):
        src = make_source(DataHParams(name="cifar10", shape=(32, 32, 3), num_classes=0))
        steps = max(2, args.steps // 4)
        rate = images_per_second(Dataset(src, args.batch, random_flip=True), steps)
    print(f"{'cifar10 (tfds.data_source, mock)':32s} {args.batch:6d} {rate:10.0f}")


if __name__ == "__main__":
    main()
