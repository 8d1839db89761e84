"""Throughput of ``cmjax-prepare-imagenet`` and of the memory-mapped "prepared" source.

``python benchmarks/prepare_throughput.py [--images 1000] [--workers 1,2]``

Writes a synthetic ImageNet-like tree (10 classes, JPEG quality 90, sides 240-640 px, mean
about 475 x 370 like ImageNet's ~400 x 350) to a temporary folder, prepares it at 64x64 with
each worker count (images/s of decode + ADM crop-resize + write), then reads batches of
1024 random records through ``make_dataset`` (images/s).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cmjax.data import DataHParams, make_dataset
from cmjax.data.prepare_imagenet import prepare


def make_tree(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"n{i % 10:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = int(rng.integers(300, 640)), int(rng.integers(240, 500))
        coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
        image.save(folder / f"{folder.name}_{i}.JPEG", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "train"
        make_tree(src, args.images)
        print("| workers | images | seconds | images/s |\n| --- | --- | --- | --- |")
        for workers in [int(w) for w in args.workers.split(",")]:
            out = Path(tmp) / f"out{workers}"
            start = time.perf_counter()
            prepare(src, out, workers=workers, chunk_size=100, log=lambda _: None)
            seconds = time.perf_counter() - start
            rate = args.images / seconds
            print(f"| {workers} | {args.images} | {seconds:.1f} | {rate:.0f} |")
        data = DataHParams(name="prepared", path=str(out), shape=(64, 64, 3), num_classes=10)
        ds = make_dataset(data, 1024, seed=0)
        ds.batch(0)
        start = time.perf_counter()
        steps = 20
        for step in range(1, steps + 1):
            ds.batch(step)
        rate = steps * 1024 / (time.perf_counter() - start)
        print(f"\nprepared source, batch 1024 random records: {rate:,.0f} images/s")


if __name__ == "__main__":
    main()
