"""Frozen networks read from published weight files instead of a run (``FrozenSpec.loader``
other than ``"run"``): how to build each network and how to read its files.

The record a checkpoint keeps of such a network names its loader and its files; a resume
rebuilds the network from the record alone (the parameters are in the checkpoint).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from cmjax.models.lpips import LPIPS, load_lpips_params
from cmjax.objectives import FrozenNetwork


@dataclasses.dataclass(frozen=True)
class FileNetwork:
    """``definition()``: the network; ``load(files)``: its parameters from the files."""

    definition: Callable[[], FrozenNetwork]
    load: Callable[[Sequence[str]], Any]


FILE_LOADERS: dict[str, FileNetwork] = {
    "lpips": FileNetwork(
        definition=lambda: FrozenNetwork(None, LPIPS(), (), 0),
        load=lambda files: load_lpips_params(*files),
    ),
}


def file_network(loader: str) -> FileNetwork:
    if loader not in FILE_LOADERS:
        raise KeyError(f"no frozen-network loader {loader!r}; known: {sorted(FILE_LOADERS)}")
    return FILE_LOADERS[loader]
