"""``cmjax-fid --samples=S.npz --reference=R.npz --inception=inception_fid.npz``.

``--samples``: uint8 images (``arr_0`` of cmjax-sample / ADM batches). ``--reference``: an
.npz with ``mu`` and ``sigma``, or with reference images under ``arr_0``. ``--save_stats``
writes the samples' ``mu``/``sigma`` (to build reference statistics from a dataset npz).

8x8 single-channel samples (the embedded digits default) are scored without Inception:
``cmjax-fid --samples=S.npz`` prints the digits FD *proxy* (not FID; see
``cmjax.evaluation.digits_proxy``) against all 1,797 digits and the data-vs-data floor.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

from cmjax.evaluation import digits_proxy
from cmjax.evaluation.fid import (
    dataset_statistics,
    frechet_distance,
    load_reference_stats,
    make_feature_fn,
)
from cmjax.evaluation.inception import load_inception_weights

_SAMPLES = flags.DEFINE_string("samples", None, "uint8 images .npz (arr_0).")
_REFERENCE = flags.DEFINE_string("reference", None, "Reference .npz: mu/sigma, or arr_0 images.")
_INCEPTION = flags.DEFINE_string(
    "inception", None, "FID Inception weights (.npz); not needed for 8x8x1 digits samples."
)
_SAVE = flags.DEFINE_string("save_stats", None, "Write the samples' mu/sigma here.")
_BATCH = flags.DEFINE_integer("inception_batch_size", 200, "Images per Inception batch.")


def load_images(path: str) -> np.ndarray:
    with np.load(path) as f:
        if "arr_0" not in f:
            raise app.UsageError(f"{path} has no 'arr_0' image array (found {sorted(f.files)})")
        return f["arr_0"]


def images_of(path: str) -> np.ndarray:
    x = load_images(path)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise app.UsageError(f"{path}: arr_0 must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
    return x


def stats_of_images(feature_fn, x: np.ndarray, batch: int):
    return dataset_statistics(feature_fn, (x[i : i + batch] for i in range(0, len(x), batch)))


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    samples = load_images(_SAMPLES.value)
    if samples.shape[1:] == digits_proxy.IMAGE_SHAPE:
        print_digits_proxy(samples)
        return
    if not _INCEPTION.value:
        raise app.UsageError("--inception=<inception_fid.npz> is required for FID")
    feature_fn = make_feature_fn(load_inception_weights(_INCEPTION.value))
    mu, sigma = stats_of_images(feature_fn, images_of(_SAMPLES.value), _BATCH.value)
    if _SAVE.value:
        np.savez(_SAVE.value, mu=mu, sigma=sigma)
    if _REFERENCE.value:
        with np.load(_REFERENCE.value) as f:
            has_stats = "mu" in f
        if has_stats:
            ref = load_reference_stats(_REFERENCE.value)
        else:
            ref = stats_of_images(feature_fn, images_of(_REFERENCE.value), _BATCH.value)
        print(f"FID {frechet_distance(mu, sigma, *ref):.4f}")


def print_digits_proxy(samples: np.ndarray) -> None:
    """The digits FD proxy of uint8 (N, 8, 8, 1) samples, with the data-vs-data floor."""
    if samples.dtype != np.uint8:
        raise app.UsageError(f"arr_0 must be uint8 (N, 8, 8, 1), got {samples.dtype}")
    if _REFERENCE.value or _SAVE.value:
        raise app.UsageError(
            "8x8x1 samples are scored against the embedded digits; drop --reference/--save_stats"
        )
    proxy = digits_proxy.digits_fd_proxy(samples)
    print(
        f"digits_fd_proxy {proxy:.4f} (NOT FID: Frechet distance in a small digits "
        f"classifier's features, {len(samples)} samples vs all 1797 digits; data-vs-data "
        f"floor {digits_proxy.data_floor():.4f}; classifier held-out accuracy "
        f"{digits_proxy.digits_classifier().held_out_accuracy:.3f})"
    )


def run() -> None:
    flags.mark_flags_as_required(["samples"])
    app.run(main)


if __name__ == "__main__":
    run()
