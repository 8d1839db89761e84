"""``cmjax-import --source=FILE --workdir=DIR [--format=auto] [--weights=ema]``.

Reads a published checkpoint (see :mod:`cmjax.importers`) and writes a cmjax work directory
that ``cmjax-sample``, ``cmjax-fid`` and ``--config.init_from=DIR`` accept.
"""

from __future__ import annotations

from absl import app, flags

from cmjax.importers import FORMATS, CheckpointImportError, import_to_workdir

_SOURCE = flags.DEFINE_string("source", None, "The published checkpoint file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The new cmjax work directory to write.")
_FORMAT = flags.DEFINE_enum("format", "auto", ["auto", *FORMATS], "The file's format.")
_WEIGHTS = flags.DEFINE_enum(
    "weights", "ema", ["ema", "online"], "Which weights of a training snapshot (CIFAR-10 CM)."
)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Image size (default: what the format's published models use)."
)
_ATTN = flags.DEFINE_list(
    "attn_resolutions", None, "CIFAR-10 CM: attention resolutions (default: the paper's 16)."
)
_HEAD_CHANNELS = flags.DEFINE_integer(
    "num_head_channels",
    None,
    "ImageNet 64 CM: channels per attention head (not stored in the weights; default 64).",
)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    options = {}
    if _WEIGHTS.value != "ema":
        options["weights"] = _WEIGHTS.value
    if _IMAGE_SIZE.value is not None:
        options["image_size"] = _IMAGE_SIZE.value
    if _ATTN.value is not None:
        options["attn_resolutions"] = tuple(int(r) for r in _ATTN.value)
    if _HEAD_CHANNELS.value is not None:
        options["num_head_channels"] = _HEAD_CHANNELS.value
    try:
        config = import_to_workdir(_SOURCE.value, _WORKDIR.value, _FORMAT.value, **options)
    except (CheckpointImportError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from None
    print(
        f"wrote {_WORKDIR.value}: model {config.model.name}, objective {config.objective.name}, "
        f"data shape {tuple(config.data.shape)}; sample with "
        f"cmjax-sample --workdir={_WORKDIR.value}"
    )


def run() -> None:
    flags.mark_flags_as_required(["source", "workdir"])
    app.run(main)


if __name__ == "__main__":
    run()
