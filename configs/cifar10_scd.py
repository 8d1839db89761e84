"""sCD on CIFAR-10 with DDPM++ (Lu & Song 2024): FID 3.66 (1 step), 2.52 (2 steps).

configs/cifar10_sct.py with dropout 0 and dx_t/dt from a frozen TrigFlow teacher:
``--config.objective.teacher=<a configs/cifar10_trigflow.py work directory>`` (usually the
same run as ``--config.init_from``). The teacher is read once, when the run starts, and then
saved in every checkpoint with the run.

Variants: "" (the recipe), "tiny" (same code, tiny widths and budget, for tests).
"""

import importlib.util
from pathlib import Path

from ml_collections import config_dict


def get_config(variant: str = "") -> config_dict.ConfigDict:
    path = Path(__file__).with_name("cifar10_sct.py")
    spec = importlib.util.spec_from_file_location("cmjax_config_cifar10_sct", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.consistency_config("scd", dropout=0.0, variant=variant)
