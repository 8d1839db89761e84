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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import flags

from cmjax.cli.runner import Command
from cmjax.errors import UserError, one_line
from cmjax.evaluation import digits_proxy
from cmjax.evaluation.fid import (
    dataset_statistics,
    frechet_distance,
    load_reference_stats,
    make_feature_fn,
)
from cmjax.evaluation.inception import load_inception_weights
from cmjax.workdir.atomic import write_atomic


def define(fv: flags.FlagValues, argv: Sequence[str]) -> None:
    del argv
    flags.DEFINE_string("samples", None, "uint8 images .npz (arr_0).", flag_values=fv)
    flags.DEFINE_string(
        "reference", None, "Reference .npz: mu/sigma, or arr_0 images.", flag_values=fv
    )
    flags.DEFINE_string(
        "inception",
        None,
        "FID Inception weights (.npz); not needed for 8x8x1 digits samples.",
        flag_values=fv,
    )
    flags.DEFINE_string("save_stats", None, "Write the samples' mu/sigma here.", flag_values=fv)
    flags.DEFINE_integer("inception_batch_size", 200, "Images per Inception batch.", flag_values=fv)


def npz_keys(path: str, flag: str) -> list[str]:
    """The array names of an .npz, or a UserError naming the flag and the file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--{flag}={path} does not exist; pass an existing .npz file")
    try:
        with np.load(p, allow_pickle=False) as f:
            return sorted(f.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"--{flag}={path} is not a readable .npz ({one_line(e, 200)})") from e


def images_of(path: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as f:
        if "arr_0" not in f:
            raise UserError(f"{path} has no 'arr_0' image array (found {sorted(f.files)})")
        x = f["arr_0"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise UserError(f"{path}: arr_0 must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
    return x


def check_inputs(fv: flags.FlagValues) -> bool:
    """Check every input file before any feature is computed; True if the reference is
    statistics (mu, sigma), False if it is images (arr_0)."""
    if fv.inception_batch_size <= 0:
        raise UserError(f"--inception_batch_size must be positive, got {fv.inception_batch_size}")
    if not fv.inception:
        raise UserError(
            "--inception is required for FID (the Inception weights .npz, see "
            "cmjax/evaluation/inception.py); only 8x8x1 digits samples are scored without it"
        )
    images_of(fv.samples)
    if not Path(fv.inception).is_file() or Path(fv.inception).suffix != ".npz":
        load_inception_weights(fv.inception)  # its one-line 'not found' / 'not npz' message
    if not fv.reference:
        return False
    keys = npz_keys(fv.reference, "reference")
    if "mu" in keys or "sigma" in keys:
        load_reference_stats(fv.reference)  # validates names and shapes now
        return True
    if "arr_0" not in keys:
        raise UserError(
            f"--reference={fv.reference} holds neither statistics ('mu' and 'sigma') nor "
            f"images ('arr_0'); found {keys}"
        )
    images_of(fv.reference)
    return False


def stats_of_images(feature_fn, x: np.ndarray, batch: int):
    return dataset_statistics(feature_fn, (x[i : i + batch] for i in range(0, len(x), batch)))


def digits_samples(fv: flags.FlagValues) -> np.ndarray | None:
    """The samples if they are 8x8x1 digits (scored by the proxy), else None."""
    keys = npz_keys(fv.samples, "samples")
    if "arr_0" not in keys:
        raise UserError(
            f"--samples={fv.samples} has no 'arr_0' image array (found {keys}); pass the .npz "
            "cmjax-sample wrote"
        )
    with np.load(fv.samples, allow_pickle=False) as f:
        shape = f["arr_0"].shape
        return f["arr_0"] if shape[1:] == digits_proxy.IMAGE_SHAPE else None


def print_digits_proxy(fv: flags.FlagValues, samples: np.ndarray) -> None:
    """The digits FD proxy of uint8 (N, 8, 8, 1) samples, with the data-vs-data floor."""
    if samples.dtype != np.uint8:
        raise UserError(f"arr_0 must be uint8 (N, 8, 8, 1), got {samples.dtype}")
    if len(samples) < 2:
        raise UserError(f"--samples holds {len(samples)} sample; a Frechet distance needs >= 2")
    if fv.reference or fv.save_stats:
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


def main(fv: flags.FlagValues) -> None:
    digits = digits_samples(fv)
    if digits is not None:
        print_digits_proxy(fv, digits)
        return
    has_stats = check_inputs(fv)
    samples = images_of(fv.samples)
    if len(samples) < 2:
        raise UserError(f"--samples holds {len(samples)} image; FID statistics need >= 2")
    feature_fn = make_feature_fn(load_inception_weights(fv.inception))
    mu, sigma = stats_of_images(feature_fn, samples, fv.inception_batch_size)
    if fv.save_stats:
        write_atomic(fv.save_stats, lambda f: np.savez(f, mu=mu, sigma=sigma))
    if fv.reference:
        if has_stats:
            ref = load_reference_stats(fv.reference)
        else:
            ref = stats_of_images(feature_fn, images_of(fv.reference), fv.inception_batch_size)
        print(f"FID {frechet_distance(mu, sigma, *ref):.4f}")


COMMAND = Command(
    "cmjax-fid",
    "FID of uint8 samples against reference statistics or images (the digits proxy for 8x8x1).",
    define,
    main,
    required=("samples",),
)
run = COMMAND.run

if __name__ == "__main__":
    run()
