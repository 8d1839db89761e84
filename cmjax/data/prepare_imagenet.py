"""Preprocess ImageNet as ADM did into cmjax's prepared format (``cmjax-prepare-imagenet``).

Turns a tree of training images into cmjax's prepared format, preprocessed exactly as ADM /
consistency models made their ImageNet reference batches (``cmjax.data.adm_preprocess``):

    OUT/images.npy   uint8 (N, S, S, 3), a plain .npy read by memory map
    OUT/labels.npy   int32 (N,), class index = position of the class name in sorted order
    OUT/files.txt    the N source paths relative to SRC, one per line, in record order
    OUT/info.json    format, count, image size, class names, the preprocessing; written last

Input layouts: class sub-folders (``train/<wnid>/*.JPEG``, images anywhere below each class
folder), or, as ADM's loader reads it, all images in one folder with the class as the file
name's part before the first ``_`` (``n01440764_10026.JPEG``).

The work runs in chunks of records. Finished chunks are recorded in ``OUT/progress.json``
after their pixels are flushed to ``OUT/images.partial.npy``; a killed run started again with
the same arguments continues from there. ``images.npy`` and ``info.json`` appear only when
every record is written, so an unfinished folder never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from cmjax.data import adm_preprocess
from cmjax.errors import PrepareError

FORMAT = "cmjax-prepared-v1"
PARTIAL = "images.partial.npy"
PROGRESS = "progress.json"


def list_images(src: str | Path) -> tuple[list[str], list[int], list[str]]:
    """(relative paths, labels, class names) of the images under ``src``, in record order.

    Records are sorted by class then by relative path; labels index the sorted class names.
    """
    root = Path(src)
    if not root.is_dir():
        raise PrepareError(f"source folder {root} does not exist; pass --src=<train folder>")
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    dirs = [e.name for e in entries if e.is_dir()]
    flat = [e.name for e in entries if e.is_file() and _is_image(e.name)]
    if dirs and flat:
        raise PrepareError(
            f"{root} holds both images ({flat[0]}, ...) and folders ({dirs[0]}, ...); "
            "use one class folder per class, or all images in one folder named CLASS_*.ext"
        )
    paths: list[str] = []
    class_of: list[str] = []
    if dirs:
        for d in dirs:
            found = sorted(_walk_images(root / d, root))
            paths += found
            class_of += [d] * len(found)
    else:
        paths = flat
        class_of = [name.split("_")[0] for name in flat]
    if not paths:
        raise PrepareError(
            f"no images ({'/'.join(adm_preprocess.IMAGE_SUFFIXES)}) under {root}; "
            "pass the folder that holds the class folders (e.g. ILSVRC2012 train/)"
        )
    classes = sorted(set(class_of))
    index = {c: k for k, c in enumerate(classes)}
    return paths, [index[c] for c in class_of], classes


def _is_image(name: str) -> bool:
    return name.lower().endswith(adm_preprocess.IMAGE_SUFFIXES)


def _walk_images(folder: Path, root: Path) -> Iterator[str]:
    for dirpath, _, files in os.walk(folder):
        rel = Path(dirpath).relative_to(root)
        for f in files:
            if _is_image(f):
                yield (rel / f).as_posix()


def _fingerprint(paths: Sequence[str], labels: Sequence[int], image_size: int, chunk: int) -> str:
    h = hashlib.sha256(f"{FORMAT} {image_size} {chunk}\n".encode())
    for p, y in zip(paths, labels, strict=True):
        h.update(f"{y} {p}\n".encode())
    return h.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _process_chunk(args: tuple[str, list[str], int, int]):
    """Worker: (chunk id, uint8 (n, S, S, 3)) or (chunk id, "path: error") for a bad file."""
    src, rel_paths, image_size, chunk_id = args
    out = np.empty((len(rel_paths), image_size, image_size, 3), np.uint8)
    for i, rel in enumerate(rel_paths):
        path = os.path.join(src, rel)
        try:
            out[i] = adm_preprocess.load_adm_image(path, image_size)
        except Exception as e:  # PIL raises many types; all mean "this file is unreadable"
            msg = str(e).splitlines()[0][:200] if str(e) else ""
            return chunk_id, f"cannot read image {path} ({type(e).__name__}: {msg})"
    return chunk_id, out


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def prepare(
    src: str | Path,
    out: str | Path,
    image_size: int = 64,
    workers: int = 1,
    chunk_size: int = 1024,
    max_chunks: int | None = None,
    log_every_s: float = 10.0,
    log=print,
) -> bool:
    """Preprocess every image under ``src`` into ``out``; True when ``out`` is complete.

    ``max_chunks`` stops after that many chunks of this run (False returned; run again to
    continue). Raises PrepareError (one line) for bad input or an unreadable image.
    """
    if image_size < 1 or chunk_size < 1 or workers < 1:
        raise PrepareError("--image_size, --chunk_size and --workers must be positive")
    src, out = Path(src), Path(out)
    paths, labels, classes = list_images(src)
    n = len(paths)
    fingerprint = _fingerprint(paths, labels, image_size, chunk_size)
    out.mkdir(parents=True, exist_ok=True)
    info_path = out / "info.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("fingerprint") == fingerprint:
            log(f"{out} is already complete ({n} images); nothing to do")
            return True
        raise PrepareError(
            f"{out} already holds a finished preparation of other input or settings; "
            "choose another --out or delete that folder"
        )

    shape = (n, image_size, image_size, 3)
    partial, progress_path = out / PARTIAL, out / PROGRESS
    done: set[int] = set()
    if progress_path.exists() and partial.exists():
        state = json.loads(progress_path.read_text())
        if state.get("fingerprint") == fingerprint:
            done = set(state["done"])
        else:
            log(f"{out} holds an unfinished run of other input or settings; starting over")
    if done:
        images = np.lib.format.open_memmap(partial, mode="r+")
        if images.shape != shape or images.dtype != np.uint8:
            raise PrepareError(f"{partial} has the wrong shape; delete it and run again")
    else:
        progress_path.unlink(missing_ok=True)
        images = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)

    num_chunks = -(-n // chunk_size)
    todo = [c for c in range(num_chunks) if c not in done]
    if max_chunks is not None:
        todo = todo[:max_chunks]
    if done:
        log(f"resuming: {len(done)} of {num_chunks} chunks already done")
    jobs = [(str(src), paths[c * chunk_size : (c + 1) * chunk_size], image_size, c) for c in todo]
    remaining = n - sum(min(chunk_size, n - c * chunk_size) for c in done)
    start = last_log = time.monotonic()
    written = 0
    pool = _make_pool(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        results = pool.imap_unordered(_process_chunk, jobs) if pool else map(_process_chunk, jobs)
        for chunk_id, result in results:
            if isinstance(result, str):
                raise PrepareError(result + "; fix or remove it and run again")
            lo = chunk_id * chunk_size
            images[lo : lo + len(result)] = result
            images.flush()
            done.add(chunk_id)
            _write_atomic(
                progress_path, json.dumps({"fingerprint": fingerprint, "done": sorted(done)})
            )
            written += len(result)
            now = time.monotonic()
            if now - last_log >= log_every_s or len(done) == num_chunks:
                rate = written / max(now - start, 1e-9)
                left = remaining - written
                log(
                    f"prepared {n - left}/{n} images ({100 * (n - left) / n:.1f}%), "
                    f"{rate:.0f} images/s, ETA {_format_eta(left / max(rate, 1e-9))}"
                )
                last_log = now
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    del images
    if len(done) < num_chunks:
        log(f"stopped after {len(done)} of {num_chunks} chunks; run again to continue")
        return False

    np.save(out / "labels.npy", np.asarray(labels, np.int32))
    _write_atomic(out / "files.txt", "".join(p + "\n" for p in paths))
    os.replace(partial, out / "images.npy")
    info = dict(
        format=FORMAT,
        num_images=n,
        image_size=image_size,
        num_classes=len(classes),
        classes=classes,
        preprocessing=adm_preprocess.DESCRIPTION,
        source=str(src.resolve()),
        fingerprint=fingerprint,
    )
    _write_atomic(info_path, json.dumps(info, indent=1))
    progress_path.unlink(missing_ok=True)
    log(f"wrote {n} images of {len(classes)} classes to {out}")
    return True


def _make_pool(workers: int):
    # fork: workers inherit the imported modules (no per-worker start-up); no JAX runs here.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ctx.Pool(workers, initializer=_worker_signals)


def _worker_signals() -> None:
    """Ctrl-C and kill reach the parent, which stops the workers: no worker tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
