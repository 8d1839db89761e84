"""Start from published checkpoints: ``cmjax-import`` and :func:`import_checkpoint`.

=================  ============================================  ===================  ==========
format             files (as published)                          cmjax network        objective
=================  ============================================  ===================  ==========
``cm_cifar10``     consistency_models_cifar10 ``checkpoint_80``  ``ncsnpp``           ``ict``
                   (flax msgpack of the training State)
``cm_imagenet64``  consistency_models ``cd_imagenet64_l2.pt``,   ``adm``              ``ict``
                   ``ct_imagenet64.pt``, ... (torch state dict)
``edm``            EDM ``edm-cifar10-32x32-uncond-vp.pkl``,      ``ddpmpp`` / ``adm``  ``edm``
                   ``edm-imagenet-64x64-cond-adm.pkl`` (pickle)
=================  ============================================  ===================  ==========

Every importer reads its file without running code from it (msgpack, or PyTorch pickles
through :mod:`cmjax.importers.torch_pickle`, which rebuilds only tensors and plain containers
and needs no torch), maps each parameter by name and shape onto the cmjax network the file
implies, and :func:`write_workdir` saves it as a cmjax work directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmjax.errors import CheckpointImportError

FORMATS = ("cm_cifar10", "cm_imagenet64", "edm")


def detect_format(path: str | Path) -> str:
    """The format of ``path`` from its first bytes: zip (torch.save) -> cm_imagenet64,
    pickle -> edm, anything else is tried as msgpack (cm_cifar10)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        return "cm_imagenet64"
    if head[:1] == b"\x80":
        return "edm"
    return "cm_cifar10"


def import_checkpoint(source: str | Path, fmt: str = "auto", **options: Any) -> tuple[Any, dict]:
    """(cmjax config, network params) for a published checkpoint file.

    ``options`` go to the format's importer (``weights``, ``image_size``, ``attn_resolutions``
    ...; see each module).
    """
    if not Path(source).is_file():
        raise CheckpointImportError(f"--source={source} is not a file; pass the checkpoint file")
    fmt = detect_format(source) if fmt == "auto" else fmt
    if fmt == "cm_cifar10":
        from cmjax.importers.cm_cifar10 import import_cm_cifar10

        return import_cm_cifar10(source, **options)
    if fmt == "cm_imagenet64":
        from cmjax.importers.cm_imagenet64 import import_cm_imagenet64

        return import_cm_imagenet64(source, **options)
    if fmt == "edm":
        from cmjax.importers.edm import import_edm

        return import_edm(source, **options)
    raise CheckpointImportError(f"unknown format {fmt!r}; choose 'auto' or one of {FORMATS}")


def import_to_workdir(
    source: str | Path, workdir: str | Path, fmt: str = "auto", **options: Any
) -> Any:
    """Import ``source`` and write it as the cmjax work directory ``workdir``; its config."""
    from cmjax.importers.common import write_workdir

    config, params = import_checkpoint(source, fmt, **options)
    write_workdir(workdir, config, params)
    return config


def __getattr__(name: str) -> Any:
    if name == "write_workdir":  # imported on use: the package itself stays light, so its
        # safe readers (torch_pickle) serve lower layers (cmjax.models.lpips)
        from cmjax.importers.common import write_workdir

        return write_workdir
    raise AttributeError(f"module 'cmjax.importers' has no attribute {name!r}")


__all__ = [
    "FORMATS",
    "CheckpointImportError",
    "detect_format",
    "import_checkpoint",
    "import_to_workdir",
    "write_workdir",
]
