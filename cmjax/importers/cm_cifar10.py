"""The official Consistency Models CIFAR-10 checkpoints (openai/consistency_models_cifar10, JAX).

Files such as ``cd-lpips/checkpoints/checkpoint_80`` or ``ct-lpips/checkpoints/checkpoint_74``
are flax ``serialization.to_bytes`` of the reference's training ``State`` (msgpack: step, lr,
ema_rate, params, params_ema, [target_params,] model_state, opt_state, rng_state). msgpack
holds only numbers, strings, containers and arrays: reading it runs no code from the file.

The network is score_sde's NCSN++ (BigGAN blocks, FIR resampling, residual input pyramid,
Fourier embedding of scale 16 of c_noise = ln(sigma) / 4) = cmjax's ``ncsnpp``. The consistency
function (c_skip, c_out with sigma_min = 0.002, sigma_data = 0.5) is cmjax's iCT wrapper, so
the written config has objective ``ict`` with ``noise_cond_scale`` 1.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict

from cmjax.importers.common import (
    CheckpointImportError,
    Target,
    abstract_network_params,
    count,
    make_config,
    map_parameters,
)

# configs/cifar10_ve_cd.py of the reference (the published CD / CT models).
PAPER_MODEL = dict(
    name="ncsnpp",
    nf=128,
    ch_mult=(2, 2, 2),
    num_res_blocks=4,
    attn_resolutions=(16,),
    dropout=0.0,
    fir_kernel=(1, 3, 3, 1),
    fourier_scale=16.0,
    skip_rescale=True,
    init_scale=0.0,
    num_classes=0,
    dtype="float32",
    noise_cond_scale=1.0,
)

WEIGHTS = ("ema", "online")


def read_state(path: str | Path) -> dict[str, Any]:
    """The reference's State as nested dicts of numpy arrays (msgpack; no code runs)."""
    data = Path(path).read_bytes()
    try:
        state = serialization.msgpack_restore(data)
    except Exception as e:
        raise CheckpointImportError(
            f"{path} is not a flax msgpack checkpoint ({type(e).__name__}); expected a "
            "consistency_models_cifar10 file such as checkpoint_80"
        ) from None
    if not isinstance(state, dict) or "params_ema" not in state or "params" not in state:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointImportError(
            f"{path} holds {keys}, not a consistency_models_cifar10 training State "
            "(params, params_ema, ...)"
        )
    return state


def _flat(tree: Any) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in flatten_dict(tree).items()}


def implied_settings(flat: dict[str, np.ndarray], attn_resolutions=None) -> dict[str, Any]:
    """nf, ch_mult, num_res_blocks (and the attention count) the parameter shapes imply."""
    names = list(flat)
    if "Conv_0/kernel" not in flat:
        raise CheckpointImportError(
            "the parameters have no Conv_0/kernel: not an NCSN++ from consistency_models_cifar10"
        )
    nf = int(flat["Conv_0/kernel"].shape[-1])
    levels = count(names, r"Downsample_(\d+)/") + 1
    blocks = count(names, r"ResnetBlockBigGANpp_(\d+)/")
    # Blocks: levels*R down the encoder + (levels-1) down + 2 middle + levels*(R+1) up + (levels-1).
    per_level, rem = divmod(blocks - 3 * levels, 2 * levels)
    if rem or per_level < 1:
        raise CheckpointImportError(
            f"{blocks} residual blocks over {levels} resolutions is not an NCSN++ layout"
        )
    ch_mult = []
    for level in range(levels):
        key = f"ResnetBlockBigGANpp_{level * (per_level + 1)}/Conv_0/kernel"
        ch_mult.append(int(flat[key].shape[-1]) // nf)
    settings = dict(PAPER_MODEL)
    settings.update(nf=nf, ch_mult=tuple(ch_mult), num_res_blocks=per_level)
    if attn_resolutions is not None:
        settings["attn_resolutions"] = tuple(attn_resolutions)
    settings["attention_blocks_in_file"] = count(names, r"AttnBlockpp_(\d+)/")
    return settings


_RESBLOCK = re.compile(r"ResnetBlockBigGANpp_(\d+)/(.*)")
_ATTN = re.compile(r"AttnBlockpp_(\d+)/(.*)")


def rename(name: str) -> Target | None:
    """The cmjax ``ncsnpp`` parameter for a reference NCSN++ parameter name."""
    if m := _RESBLOCK.fullmatch(name):
        i, rest = m.groups()
        if rest.startswith("Conv_2/"):  # the 1x1 conv skip: cmjax's Dense_1
            leaf = rest.split("/")[1]
            return Target(f"BigGANResBlock_{i}/Dense_1/{leaf}", lambda w: w.reshape(w.shape[-2:]))
        return Target(f"BigGANResBlock_{i}/{rest}")
    if m := _ATTN.fullmatch(name):
        i, rest = m.groups()
        if nin := re.fullmatch(r"NIN_(\d+)/(W|b)", rest):
            leaf = "kernel" if nin.group(2) == "W" else "bias"
            return Target(f"AttnBlock_{i}/Dense_{nin.group(1)}/{leaf}")
        return Target(f"AttnBlock_{i}/{rest}")
    if m := re.fullmatch(r"Downsample_(\d+)/Conv2d_0/(weight|bias)", name):
        leaf = "kernel" if m.group(2) == "weight" else "bias"
        return Target(f"FIRDownConv3x3_{m.group(1)}/{leaf}")
    if m := re.fullmatch(r"GaussianFourierProjection_(\d+)/W", name):
        return Target(f"GaussianFourierEmbedding_{m.group(1)}/W")
    if re.fullmatch(r"(Conv|Dense|GroupNorm)_\d+/(kernel|bias|scale)", name):
        return Target(name)
    return None


def import_cm_cifar10(
    path: str | Path,
    *,
    weights: str = "ema",
    image_size: int = 32,
    attn_resolutions: tuple[int, ...] | None = None,
    **unused: Any,
):
    """(config, network params) for a consistency_models_cifar10 checkpoint.

    ``weights``: "ema" (``params_ema``, what the reference samples from) or "online"
    (``params``). ``image_size``/``attn_resolutions``: only for non-CIFAR-sized networks.
    """
    if unused:
        raise CheckpointImportError(f"options {sorted(unused)} do not apply to cm_cifar10")
    if weights not in WEIGHTS:
        raise CheckpointImportError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    state = read_state(path)
    flat = _flat(state["params_ema" if weights == "ema" else "params"])
    settings = implied_settings(flat, attn_resolutions)
    model = {k: v for k, v in settings.items() if k != "attention_blocks_in_file"}
    shape = (image_size, image_size, 3)
    abstract = abstract_network_params(model, shape, 0)
    params = map_parameters(
        flat,
        rename,
        abstract,
        what=f"{path} (consistency_models_cifar10 NCSN++)",
        settings={**settings, "image_size": image_size},
    )
    ema_rate = float(np.asarray(state.get("ema_rate", 0.9999)))
    config = make_config(
        data_name="cifar10",
        shape=shape,
        num_classes=0,
        model=model,
        objective="ict",
        sampling={},  # the iCT sampler defaults (two_step_sigma 0.821)
        ema_rates=(ema_rate,),
    )
    return config, params
