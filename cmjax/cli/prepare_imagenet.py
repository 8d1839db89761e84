"""``cmjax-prepare-imagenet --src=train/ --out=imagenet64_adm/ [--image_size=64] [--workers=N]``.

ImageNet training images preprocessed exactly as ADM made its reference batches, into cmjax's
memory-mapped folder (``config.data.name='prepared'``, ``config.data.path=OUT``); resumable:
run the same command again after an interruption (``cmjax.data.prepare_imagenet``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

from absl import flags

from cmjax.cli.runner import Command
from cmjax.errors import UserError


def define(fv: flags.FlagValues, argv: Sequence[str]) -> None:
    del argv
    flags.DEFINE_string(
        "src", None, "The train/ folder: <class>/<images>, or <wnid>_*.JPEG.", flag_values=fv
    )
    flags.DEFINE_string("out", None, "Output folder (resumable).", flag_values=fv)
    flags.DEFINE_integer("image_size", 64, "Side S of the square images.", flag_values=fv)
    flags.DEFINE_integer("workers", os.cpu_count() or 1, "Worker processes.", flag_values=fv)
    flags.DEFINE_integer("chunk_size", 1024, "Images per chunk.", flag_values=fv)
    flags.DEFINE_integer(
        "max_chunks", None, "Stop after this many chunks (resumable).", flag_values=fv
    )


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def main(fv: flags.FlagValues) -> None:
    from cmjax.data.prepare_imagenet import prepare

    for name in ("image_size", "workers", "chunk_size"):
        if fv[name].value < 1:
            raise UserError(f"--{name} must be a positive integer, got {fv[name].value}")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        prepare(  # an unfinished run (--max_chunks) says so; it resumes later
            fv.src,
            fv.out,
            image_size=fv.image_size,
            workers=fv.workers,
            chunk_size=fv.chunk_size,
            max_chunks=fv.max_chunks,
            log=lambda line: print(line, flush=True),
        )
    except KeyboardInterrupt:
        raise KeyboardInterrupt("run again to continue") from None


COMMAND = Command(
    "cmjax-prepare-imagenet",
    "Preprocess ImageNet training images as ADM did, into cmjax's memory-mapped format.",
    define,
    main,
    required=("src", "out"),
)
run = COMMAND.run

if __name__ == "__main__":
    run()
