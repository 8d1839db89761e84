"""``config.data`` as frozen hyperparameters: which source and the examples' shape."""

from __future__ import annotations

import dataclasses

from cmjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataHParams:
    """``config.data``: which source (``cmjax.data.pipeline.make_source``) and its shape."""

    name: str
    shape: tuple[int, ...]
    num_classes: int = 0
    random_flip: bool = False
    distribution: str = "gaussian_mixture"  # toy2d
    data_dir: str = ""  # TFDS
    path: str = ""  # npz / image_folder / prepared
    tfds_name: str = ""
    split: str = "train"
    resize: bool = False

    def __post_init__(self):
        if not self.shape or any(d < 1 for d in self.shape):
            raise ConfigError(f"config.data.shape must be positive sizes, got {self.shape}")
        if self.num_classes < 0:
            raise ConfigError(f"config.data.num_classes must be >= 0, got {self.num_classes}")
