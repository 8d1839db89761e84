"""``cmjax-fid --samples=S.npz --reference=R.npz --inception=inception_fid.npz``.

``--samples``: uint8 images (``arr_0`` of cmjax-sample / ADM batches). ``--reference``: an
.npz with ``mu`` and ``sigma``, or with reference images under ``arr_0``. ``--save_stats``
writes the samples' ``mu``/``sigma`` (to build reference statistics from a dataset npz).

8x8 single-channel samples (the embedded digits default) are scored without Inception:
``cmjax-fid --samples=S.npz`` prints the digits FD *proxy* (not FID; see
``cmjax.evaluation.digits_proxy``) against all 1,797 digits and the data-vs-data floor.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from absl import flags

from cmjax.cli import run_and_exit
from cmjax.evaluation import digits_proxy
from cmjax.evaluation.fid import (
    dataset_statistics,
    frechet_distance,
    load_reference_stats,
    make_feature_fn,
)
from cmjax.evaluation.inception import load_inception_weights
from cmjax.user_errors import UserError

_SAMPLES = flags.DEFINE_string("samples", None, "uint8 images .npz (arr_0).")
_REFERENCE = flags.DEFINE_string("reference", None, "Reference .npz: mu/sigma, or arr_0 images.")
_INCEPTION = flags.DEFINE_string(
    "inception", None, "FID Inception weights (.npz); not needed for 8x8x1 digits samples."
)
_SAVE = flags.DEFINE_string("save_stats", None, "Write the samples' mu/sigma here.")
_BATCH = flags.DEFINE_integer("inception_batch_size", 200, "Images per Inception batch.")


def npz_keys(path: str, flag: str) -> list[str]:
    """The array names of an .npz, or a UserError naming the flag and the file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--{flag}={path} does not exist; pass an existing .npz file")
    try:
        with np.load(p, allow_pickle=False) as f:
            return sorted(f.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"--{flag}={path} is not a readable .npz ({e})") from e


def images_of(path: str) -> np.ndarray:
    with np.load(path) as f:
        if "arr_0" not in f:
            raise UserError(f"{path} has no 'arr_0' image array (found {sorted(f.files)})")
        x = f["arr_0"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise UserError(f"{path}: arr_0 must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
    return x


def check_inputs() -> bool:
    """Check every input file before any feature is computed; True if the reference is
    statistics (mu, sigma), False if it is images (arr_0)."""
    if not _SAMPLES.value or not _INCEPTION.value:
        raise UserError("--samples and --inception are required")
    if _BATCH.value <= 0:
        raise UserError(f"--inception_batch_size must be positive, got {_BATCH.value}")
    if "arr_0" not in npz_keys(_SAMPLES.value, "samples"):
        raise UserError(f"--samples={_SAMPLES.value} has no 'arr_0' image array")
    if not Path(_INCEPTION.value).is_file():
        load_inception_weights(_INCEPTION.value)  # raises its one-line 'not found' message
    if not _REFERENCE.value:
        return False
    keys = npz_keys(_REFERENCE.value, "reference")
    if "mu" in keys or "sigma" in keys:
        load_reference_stats(_REFERENCE.value)  # validates names and shapes now
        return True
    if "arr_0" not in keys:
        raise UserError(
            f"--reference={_REFERENCE.value} holds neither statistics ('mu' and 'sigma') nor "
            f"images ('arr_0'); found {keys}"
        )
    images_of(_REFERENCE.value)
    return False


def stats_of_images(feature_fn, x: np.ndarray, batch: int):
    return dataset_statistics(feature_fn, (x[i : i + batch] for i in range(0, len(x), batch)))


def digits_samples() -> np.ndarray | None:
    """The samples if they are 8x8x1 digits (scored by the proxy), else None."""
    if not _SAMPLES.value or "arr_0" not in npz_keys(_SAMPLES.value, "samples"):
        return None
    with np.load(_SAMPLES.value) as f:
        shape = f["arr_0"].shape
        return f["arr_0"] if shape[1:] == digits_proxy.IMAGE_SHAPE else None


def print_digits_proxy(samples: np.ndarray) -> None:
    """The digits FD proxy of uint8 (N, 8, 8, 1) samples, with the data-vs-data floor."""
    if samples.dtype != np.uint8:
        raise UserError(f"arr_0 must be uint8 (N, 8, 8, 1), got {samples.dtype}")
    if _REFERENCE.value or _SAVE.value:
        raise UserError(
            "8x8x1 samples are scored against the embedded digits; drop --reference/--save_stats"
        )
    proxy = digits_proxy.digits_fd_proxy(samples)
    print(
        f"digits_fd_proxy {proxy:.4f} (NOT FID: Frechet distance in a small digits "
        f"classifier's features, {len(samples)} samples vs all 1797 digits; data-vs-data "
        f"floor {digits_proxy.data_floor():.4f}; classifier held-out accuracy "
        f"{digits_proxy.digits_classifier().held_out_accuracy:.3f})"
    )


def main(argv) -> None:
    del argv
    digits = digits_samples()
    if digits is not None:
        print_digits_proxy(digits)
        return
    has_stats = check_inputs()
    feature_fn = make_feature_fn(load_inception_weights(_INCEPTION.value))
    mu, sigma = stats_of_images(feature_fn, images_of(_SAMPLES.value), _BATCH.value)
    if _SAVE.value:
        np.savez(_SAVE.value, mu=mu, sigma=sigma)
    if _REFERENCE.value:
        if has_stats:
            ref = load_reference_stats(_REFERENCE.value)
        else:
            ref = stats_of_images(feature_fn, images_of(_REFERENCE.value), _BATCH.value)
        print(f"FID {frechet_distance(mu, sigma, *ref):.4f}")


def run() -> None:
    """Console-script entry point: one line on stderr for any error (see cmjax/cli.py)."""
    run_and_exit("cmjax-fid", main)


if __name__ == "__main__":
    run()
