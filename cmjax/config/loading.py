"""Load ``configs/*.py`` files by path, with an optional ``:variant`` suffix."""

from __future__ import annotations

import importlib.util
import traceback
from pathlib import Path

from ml_collections import config_dict

from cmjax.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def load_config(spec: str) -> config_dict.ConfigDict:
    """``"configs/x.py:variant"`` or ``"x:variant"`` (looked up in the checkout's configs/).

    A missing file, or one that fails to run (a syntax or import error, an unknown variant),
    is a ConfigError naming the file and the line."""
    path_str, _, variant = spec.partition(":")
    path = Path(path_str)
    if not path.suffix:
        path = CONFIG_DIR / f"{path_str}.py"
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found; pass a path such as configs/toy2d.py:two_moons "
            "(the configs live in the cmjax checkout: install it with pip install -e .)"
        )
    module_spec = importlib.util.spec_from_file_location(f"cmjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        return module.get_config(variant) if variant else module.get_config()
    except Exception as e:  # the user's config file, run as code
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == str(path)]
        where = f"{path}:{frames[-1].lineno}" if frames else str(path)
        if isinstance(e, SyntaxError) and e.filename == str(path):
            where = f"{path}:{e.lineno}"
        raise ConfigError(
            f"config file {where} failed to load: {type(e).__name__}: {' '.join(str(e).split())}"
        ) from e
