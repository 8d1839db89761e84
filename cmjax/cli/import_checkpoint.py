"""``cmjax-import --source=FILE --workdir=DIR [--format=auto] [--weights=ema]``.

Reads a published checkpoint (see :mod:`cmjax.importers`) and writes a cmjax work directory
that ``cmjax-sample``, ``cmjax-fid`` and ``--config.init_from=DIR`` accept. Nothing in the
file is executed (see :mod:`cmjax.importers.torch_pickle`).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from cmjax.cli.runner import Command
from cmjax.importers import FORMATS


def define(fv: flags.FlagValues, argv: Sequence[str]) -> None:
    del argv
    flags.DEFINE_string("source", None, "The published checkpoint file.", flag_values=fv)
    flags.DEFINE_string("workdir", None, "The new cmjax work directory to write.", flag_values=fv)
    flags.DEFINE_enum("format", "auto", ["auto", *FORMATS], "The file's format.", flag_values=fv)
    flags.DEFINE_enum(
        "weights",
        "ema",
        ["ema", "online"],
        "Which weights of a training snapshot (CIFAR-10 CM).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "image_size",
        None,
        "Image size (default: what the format's published models use).",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "attn_resolutions",
        None,
        "CIFAR-10 CM: attention resolutions (default: the paper's 16).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "num_head_channels",
        None,
        "ImageNet 64 CM: channels per attention head (not stored in the weights; default 64).",
        flag_values=fv,
    )

    flags.DEFINE_enum(
        "objective",
        "auto",
        ["auto", "ict", "edm"],
        "ImageNet 64 CM: what the file is; auto: edm for a file named edm*, else ict.",
        flag_values=fv,
    )


def main(fv: flags.FlagValues) -> None:
    from cmjax.errors import UserError
    from cmjax.importers import import_to_workdir

    options = {}
    if fv.weights != "ema":
        options["weights"] = fv.weights
    if fv.image_size is not None:
        options["image_size"] = fv.image_size
    if fv.attn_resolutions is not None:
        try:
            options["attn_resolutions"] = tuple(int(r) for r in fv.attn_resolutions)
        except ValueError:
            raise UserError("--attn_resolutions must be integers, e.g. 16 or 16,8") from None
    if fv.num_head_channels is not None:
        options["num_head_channels"] = fv.num_head_channels
    if fv.objective != "auto":
        options["objective"] = fv.objective
    config = import_to_workdir(fv.source, fv.workdir, fv.format, **options)
    print(
        f"wrote {fv.workdir}: model {config.model.name}, objective {config.objective.name}, "
        f"data shape {tuple(config.data.shape)}; sample with cmjax-sample --workdir={fv.workdir}"
    )


COMMAND = Command(
    "cmjax-import",
    "Import a published CM / EDM checkpoint (read without executing it) as a cmjax work directory.",
    define,
    main,
    required=("source", "workdir"),
)
run = COMMAND.run

if __name__ == "__main__":
    run()
