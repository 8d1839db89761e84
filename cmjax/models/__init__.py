"""Networks F(x, noise_cond, labels, train, h) and ``build_model`` from a config's ``model``.

Every network is a Flax linen module with the call contract
``__call__(self, x, noise_cond, labels=None, train=False, h=None)``, used as
``module.apply(variables, x, noise_cond, labels, train, rngs={"dropout": key})`` or with
those keywords: x (B, ...) float; noise_cond (B,) float, whatever the objective passes
(iCT: c_noise = 0.25 ln sigma times ``noise_cond_scale``; sCT/MeanFlow: t); labels (B,) int or
None; train switches dropout on; h (B,) float, a second time input (MeanFlow's t - r) for
networks built with ``second_time_input=True``. The output has the shape of x.

Shared switches (module fields, hence ``config.model`` keys), off by default so the paper
networks' parameter counts are unchanged:
  ``time_embedding``: "fourier" | "positional" (every network);
  ``second_time_input``: bool (every network);
  ``adaptive_double_norm``: bool, sCM's AdaGN (``adm``, ``ddpmpp``; needs
  ``use_scale_shift_norm=True``);
  ``dropout_max_resolution``: int, 0 = dropout everywhere (``ncsnpp``, ``adm``, ``ddpmpp``).
Every network is forward-mode differentiable (``jax.jvp``), attention included.

``ddpmpp`` is EDM's DDPM++; ``cmjax.models.ddpmpp.DDPMPP_CIFAR10`` is its CIFAR-10 model
section (55,732,739 parameters).
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


def model_name(model: nn.Module) -> str:
    """The ``config.model.name`` of a built network (its class name if unregistered)."""
    return next((n for n, c in MODELS.items() if type(model) is c), type(model).__name__)


__all__ = ["MLP", "MODELS", "ADMUNet", "DDPMpp", "NCSNpp", "SmallUNet", "build_model", "model_name"]
