"""Load ``configs/*.py`` files by path, with an optional ``:variant`` suffix."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ml_collections import config_dict

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def load_config(spec: str) -> config_dict.ConfigDict:
    """``"configs/x.py:variant"`` or ``"x:variant"`` (looked up in the checkout's configs/)."""
    path_str, _, variant = spec.partition(":")
    path = Path(path_str)
    if not path.suffix:
        path = CONFIG_DIR / f"{path_str}.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"config file {path} not found; pass a path such as configs/toy2d.py:two_moons "
            "(the configs live in the cmjax checkout: install it with pip install -e .)"
        )
    module_spec = importlib.util.spec_from_file_location(f"cmjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()
