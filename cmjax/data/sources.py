"""Random-access example sources: in-memory arrays, TFDS data sources, files, toy streams.

A source answers ``get(indices) -> (x, labels)`` for integer record indices; images come back
as uint8 (n, H, W, C), vectors as float32 (n, D), labels as int (n,) or None.
"""

from __future__ import annotations

import dataclasses
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cmjax.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
log = logging.getLogger("cmjax")


def _size_mismatch(where: str, found: Sequence[int], shape: Sequence[int]) -> DataError:
    got, want = "x".join(map(str, found)), "x".join(map(str, shape))
    return DataError(
        f"{where}: images are {got} but config.data.shape is {want}; set "
        f"config.data.shape={tuple(found)} to train at their size, or config.data.resize=True "
        "to center-crop and resize them"
    )


def check_finite(x: np.ndarray, where: str) -> None:
    """Raise a DataError naming the first non-finite entry of float array ``x`` (N, ...)."""
    bad = ~np.isfinite(x)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{where}: example {index[0]} holds {x[index]} at index {index}; data must be "
            f"finite ({int(bad.any(axis=tuple(range(1, x.ndim))).sum())} example(s) are not): "
            "drop or fix them"
        )


@dataclasses.dataclass
class ArraySource:
    """Examples held in memory: uint8 images (N, H, W, C) or float vectors (N, D)."""

    x: np.ndarray
    labels: np.ndarray | None
    name: str

    def __post_init__(self):
        if self.labels is not None and len(self.labels) != len(self.x):
            raise DataError(f"{self.name}: {len(self.x)} examples but {len(self.labels)} labels")

    @property
    def is_image(self) -> bool:
        return self.x.dtype == np.uint8

    def __len__(self) -> int:
        return len(self.x)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        labels = None if self.labels is None else self.labels[indices]
        return self.x[indices], labels


class TFDSSource:
    """A TFDS split read by random access (``tfds.data_source``, array_record format)."""

    is_image = True

    def __init__(
        self,
        tfds_name: str,
        split: str = "train",
        data_dir: str | None = None,
        with_labels: bool = False,
    ):
        import tensorflow_datasets as tfds

        self.name = tfds_name
        self.with_labels = with_labels
        try:
            self.ds = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # TFDS raises many types here; all mean "not prepared"
            raise DataError(_prepare_hint(tfds_name, data_dir, e)) from e

    def __len__(self) -> int:
        return len(self.ds)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        records = [self.ds[int(i)] for i in indices]
        x = np.stack([r["image"] for r in records]).astype(np.uint8)
        labels = np.array([r["label"] for r in records], np.int32) if self.with_labels else None
        return x, labels


def _prepare_hint(tfds_name: str, data_dir: str | None, error: Exception) -> str:
    where = data_dir or "~/tensorflow_datasets (or $TFDS_DATA_DIR)"
    manual = ""
    if tfds_name.startswith("imagenet"):
        manual = (
            " ImageNet needs a manual download: place the files TFDS names for "
            f"{tfds_name} in {where}/downloads/manual first."
        )
    return (
        f"TFDS dataset {tfds_name!r} is not prepared for random access in {where} "
        f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). Prepare it once with "
        f"`pip install tensorflow-cpu && tfds build {tfds_name} --file_format=array_record"
        f"{' --data_dir=' + data_dir if data_dir else ''}`, or set config.data.data_dir "
        f"(a local path or gs:// bucket) to where it is.{manual}"
    )


@dataclasses.dataclass
class ToyStream:
    """An endless stream of 2-D toy points: record i is a pure function of (seed, i)."""

    distribution: str
    seed: int
    name: str = "toy2d"
    labels = None
    is_image = False

    def __len__(self) -> int:
        return 2**62

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, None]:
        from cmjax.data.toy2d import sample_toy_at

        return np.asarray(sample_toy_at(self.distribution, self.seed, indices)), None


def digits_source() -> ArraySource:
    """scikit-learn's 1,797 handwritten digits, 8x8, shipped inside the package: uint8 (N,8,8,1)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ArraySource(x, digits.target.astype(np.int32), "digits")


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{where}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}"
        )
    if num_classes:
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise DataError(
                f"{where}: label {int(bad[0])} is out of range for num_classes={num_classes}"
            )
    return labels.astype(np.int32)


def resize_images(
    x: np.ndarray, shape: Sequence[int], where: str, resize: bool = False
) -> np.ndarray:
    """uint8 (N, H, W, C) images as ``shape`` (H', W', C): unchanged if they already are,
    else a DataError, or with ``resize`` center-cropped to square and resized (logged)."""
    from PIL import Image

    h, w, c = shape
    if x.shape[1:] == (h, w, c):
        return x
    if x.shape[-1] != c:
        raise DataError(f"{where}: images have {x.shape[-1]} channels, config.data.shape wants {c}")
    if not resize:
        raise _size_mismatch(where, x.shape[1:], shape)
    log.warning(
        "%s: center-cropping and resizing %d images from %dx%d to %dx%d (config.data.resize)",
        where,
        len(x),
        x.shape[1],
        x.shape[2],
        h,
        w,
    )
    out = np.empty((len(x), h, w, c), np.uint8)
    for i, img in enumerate(x):
        out[i] = _resize_one(Image.fromarray(img.squeeze(-1) if c == 1 else img), h, w, c)
    return out


def _resize_one(img, h: int, w: int, c: int) -> np.ndarray:
    from PIL import Image

    side = min(img.size)
    left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, np.uint8)
    return arr[..., None] if c == 1 else arr


def npz_source(
    path: str, shape: Sequence[int], num_classes: int, resize: bool = False
) -> ArraySource:
    """An .npz with ``x`` (or ``images``): uint8 (N, H, W, C) images or float (N, D) vectors,
    and optional integer ``labels`` (N,). Vectors must be finite."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"npz file {p} does not exist; set config.data.path to an .npz file")
    try:
        with np.load(p, allow_pickle=False) as f:
            key = "x" if "x" in f else "images" if "images" in f else None
            if key is None:
                raise DataError(f"{p}: no array named 'x' or 'images' (found {sorted(f.files)})")
            x = f[key]
            labels = f.get("labels", None)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{p} cannot be read as an .npz ({e}); rewrite it with numpy.savez") from e
    if x.ndim == 4:
        if x.dtype != np.uint8:
            raise DataError(f"{p}: images must be uint8 (N, H, W, C), got dtype {x.dtype}")
        x = resize_images(x, shape, str(p), resize)
    elif x.ndim == 2:
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"{p}: vectors must be float (N, D), got dtype {x.dtype}")
        if tuple(shape) != x.shape[1:]:
            raise DataError(
                f"{p}: vectors have dimension {x.shape[1]}, config.data.shape is {tuple(shape)}"
            )
        check_finite(x, f"{p} '{key}'")
        x = x.astype(np.float32)
        check_finite(x, f"{p} '{key}' (as float32)")
    else:
        raise DataError(
            f"{p}: '{key}' must have rank 4 (images) or 2 (vectors), got shape {x.shape}"
        )
    if num_classes and labels is None:
        raise DataError(
            f"{p}: config.data.num_classes={num_classes} but the file has no 'labels' array"
        )
    if labels is not None:
        labels = _check_labels(labels, num_classes, str(p)) if num_classes else None
    return ArraySource(x, labels, p.name)


def image_folder_source(
    path: str, shape: Sequence[int], num_classes: int, resize: bool = False
) -> ArraySource:
    """PNG/JPEG files under ``path``; with ``num_classes`` > 0 each sub-folder is a class
    (sorted by name, labels 0..K-1). Every image must have ``shape``'s size unless
    ``resize`` (center crop + bicubic resize, logged)."""
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; set config.data.path")
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"image folder {root} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    h, w, c = shape
    classes = sorted({f.parent.relative_to(root).as_posix() for f in files})
    if num_classes and len(classes) != num_classes:
        raise DataError(
            f"image folder {root} has {len(classes)} class folders {classes[:5]}..., "
            f"config.data.num_classes is {num_classes}"
        )
    x = np.empty((len(files), h, w, c), np.uint8)
    mode = {1: "L", 3: "RGB"}.get(c)
    if mode is None:
        raise DataError(f"image folders need 1 or 3 channels, config.data.shape has {c}")
    first_mode = None
    resized = 0
    for i, f in enumerate(files):
        try:
            with Image.open(f) as img:
                native = "L" if img.mode in ("L", "1", "I;16") else "RGB"
                first_mode = first_mode or (native, f)
                if native != first_mode[0]:
                    raise DataError(
                        f"{f} is {native} but {first_mode[1]} is {first_mode[0]}: "
                        "images of one dataset must share a channel count"
                    )
                if img.size != (w, h):
                    if not resize:
                        raise _size_mismatch(str(f), (img.size[1], img.size[0], c), shape)
                    resized += 1
                x[i] = _resize_one(img.convert(mode), h, w, c)
        except (OSError, SyntaxError, ValueError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(
                f"{f} cannot be read as an image ({type(e).__name__}: {e}); replace or remove it"
            ) from e
    if resized:
        log.warning(
            "%s: center-cropped and resized %d of %d images to %dx%d (config.data.resize)",
            root,
            resized,
            len(files),
            h,
            w,
        )
    labels = None
    if num_classes:
        index = {name: k for k, name in enumerate(classes)}
        labels = np.array([index[f.parent.relative_to(root).as_posix()] for f in files], np.int32)
    return ArraySource(x, labels, root.name)


def prepared_source(path: str, shape: Sequence[int], num_classes: int) -> ArraySource:
    """A folder written by ``cmjax-prepare-imagenet``: ``images.npy`` uint8 (N, H, W, C) read
    by memory map (only the requested rows are read), ``labels.npy`` int (N,), ``info.json``."""
    import json

    root = Path(path)
    hint = f"prepare it with `cmjax-prepare-imagenet --src=<train folder> --out={root}`"
    if not root.is_dir():
        raise DataError(f"prepared data folder {root} does not exist; {hint}")
    if not (root / "info.json").is_file():
        raise DataError(f"{root} is not a finished prepared folder (no info.json); {hint}")
    info = json.loads((root / "info.json").read_text())
    try:
        x = np.load(root / "images.npy", mmap_mode="r")
        labels = np.load(root / "labels.npy")
    except (OSError, ValueError) as e:
        raise DataError(f"{root}: cannot read images.npy/labels.npy ({e}); {hint}") from e
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != tuple(shape):
        raise DataError(
            f"{root}/images.npy is {x.dtype} {x.shape}, config.data.shape is {tuple(shape)}; "
            "prepare with a matching --image_size or change config.data.shape"
        )
    if len(labels) != len(x):
        raise DataError(f"{root}: {len(x)} images but {len(labels)} labels")
    if num_classes and num_classes != info.get("num_classes"):
        raise DataError(
            f"{root} has {info.get('num_classes')} classes, config.data.num_classes is "
            f"{num_classes}"
        )
    labels = _check_labels(labels, num_classes, str(root)) if num_classes else None
    return ArraySource(x, labels, root.name)
