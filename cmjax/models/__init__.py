"""Networks F(x, c_noise, labels) and ``build_model`` from a config's ``model`` section.

Every network is a Flax linen module called as
``module.apply(variables, x, noise_cond, labels, train, rngs={"dropout": key})``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from cmjax.models.adm import ADMUNet
from cmjax.models.ddpmpp import DDPMpp
from cmjax.models.mlp import MLP
from cmjax.models.ncsnpp import NCSNpp
from cmjax.models.unet_small import SmallUNet

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "unet_small": SmallUNet,
    "ncsnpp": NCSNpp,
    "adm": ADMUNet,
    "ddpmpp": DDPMpp,
}

# Keys of the ``model`` config section that configure the consistency wrapper, not the network.
WRAPPER_KEYS = ("name", "noise_cond_scale")


def build_model(model_config: Mapping[str, Any]) -> nn.Module:
    """The network named by ``model_config.name``, its other keys passed as module fields."""
    cfg = dict(model_config)
    name = cfg.get("name")
    if name not in MODELS:
        raise ValueError(f"unknown config.model.name {name!r}; choose one of {sorted(MODELS)}")
    cls = MODELS[name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    kwargs = {k: v for k, v in cfg.items() if k not in WRAPPER_KEYS}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"unknown key(s) config.model.{', config.model.'.join(unknown)} for model {name!r}; "
            f"known keys: {sorted(fields | set(WRAPPER_KEYS))}"
        )
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return cls(**kwargs)


__all__ = ["MLP", "MODELS", "ADMUNet", "DDPMpp", "NCSNpp", "SmallUNet", "build_model"]
